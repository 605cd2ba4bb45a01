"""Serializers of the subscription and webhook endpoints."""

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from tenancy.models import PlanTier


class SubscriptionChangeSerializer(serializers.Serializer):
    """``POST billing/subscription/`` body: ``{"plan_tier": "starter"|"pro"|"enterprise"}``
    (one of ``PlanTier``: any other value is a 400 ``invalid`` with ``errors.plan_tier``; a
    tier that ``BILLING_PLANS`` does not configure is a 400 ``plan_tier_unknown``)."""

    plan_tier = serializers.ChoiceField(choices=PlanTier.choices)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Change requested",
            value={
                "plan_tier": "starter",
                "requested_plan_tier": "pro",
                "subscription_status": "active",
                "change_id": "6f1d3c5e-2b7a-4c8e-9d10-3a4b5c6d7e8f",
            },
            response_only=True,
        )
    ]
)
class SubscriptionChangeResultSerializer(serializers.Serializer):
    """202 answer: the plan still in force (``plan_tier``: it changes when Stripe
    confirms), the tier asked for, the subscription's status and the change's id."""

    plan_tier = serializers.CharField()
    requested_plan_tier = serializers.CharField()
    subscription_status = serializers.CharField(allow_blank=True)
    change_id = serializers.UUIDField()


class WebhookAckSerializer(serializers.Serializer):
    """200 answer to a Stripe delivery: ``{"received": true, "duplicate": bool}``
    (``duplicate``: the event was already stored; nothing changed)."""

    received = serializers.BooleanField()
    duplicate = serializers.BooleanField()
