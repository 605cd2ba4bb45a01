"""Serializers of ``GET /api/v1/billing/upcoming-invoice/``: the query, the invoice per
meter and tier (``billing.usage.upcoming_invoice``), Stripe's preview and the differences
(``billing.invoice_preview``), with the OpenAPI examples."""

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from billing.serializers import UsagePeriodSerializer


class UpcomingInvoiceQuerySerializer(serializers.Serializer):
    """``compare``: ``stripe`` adds Stripe's invoice preview and the differences; absent:
    local usage only. Any other value is a validation error (400)."""

    compare = serializers.ChoiceField(choices=["stripe"], required=False)


class TierChargeSerializer(serializers.Serializer):
    """One graduated tier of a meter: billable units ``(start, up_to]`` (``up_to`` null:
    open-ended; counted after the included units), ``unit_amount_decimal`` cents per
    unit, the ``quantity`` in it, its exact ``amount_decimal`` (cents) and ``amount_cents``
    (its share of the meter's total, which is rounded once, half-up)."""

    start = serializers.DecimalField(max_digits=24, decimal_places=4)
    up_to = serializers.DecimalField(max_digits=24, decimal_places=4, allow_null=True)
    unit_amount_decimal = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=4)
    amount_decimal = serializers.CharField()
    amount_cents = serializers.IntegerField()


class InvoiceMeterSerializer(serializers.Serializer):
    """A meter of the plan: quantity used in the period, ``included_units`` per period,
    ``included`` (used free units), ``billable``, the tiers and ``total_cents``."""

    meter = serializers.CharField()
    stripe_price_id = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=4)
    included_units = serializers.DecimalField(max_digits=24, decimal_places=4)
    included = serializers.DecimalField(max_digits=24, decimal_places=4)
    billable = serializers.DecimalField(max_digits=24, decimal_places=4)
    tiers = TierChargeSerializer(many=True)
    total_cents = serializers.IntegerField()


class StripeLineSerializer(serializers.Serializer):
    """A line of Stripe's preview: its price, the meter of ours it is (null: none), the
    quantity Stripe has, the amount in cents and the line's period (UTC)."""

    meter = serializers.CharField(allow_null=True)
    stripe_price_id = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=4, allow_null=True)
    amount_cents = serializers.IntegerField()
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)


class StripePreviewSerializer(serializers.Serializer):
    """Stripe's invoice preview (``POST /v1/invoices/create_preview``)."""

    total_cents = serializers.IntegerField()
    currency = serializers.CharField()
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    lines = StripeLineSerializer(many=True)


class DifferenceSerializer(serializers.Serializer):
    """One difference: ``field`` (``amount_cents``, ``quantity``, ``period``, ``line``,
    ``total_cents``) of ``meter`` (null: the invoice), our value and Stripe's (strings)."""

    meter = serializers.CharField(allow_null=True)
    field = serializers.CharField()
    local = serializers.CharField(allow_null=True)
    stripe = serializers.CharField(allow_null=True)


_INVOICE_EXAMPLE = {
    "organization": "0b5d1f2e-8c3a-4f7e-9a41-6d2c8e7b9f10",
    "timezone": "UTC",
    "start": "2026-12-01T00:00:00Z",
    "end": "2027-01-01T00:00:00Z",
    "period_source": "calendar_month",
    "plan": "starter",
    "plan_name": "Starter",
    "meters": [
        {
            "meter": "api.request",
            "stripe_price_id": "price_1Starter",
            "quantity": "12001.0000",
            "included_units": "1000.0000",
            "included": "1000.0000",
            "billable": "11001.0000",
            "tiers": [
                {
                    "start": "0.0000",
                    "up_to": "10000.0000",
                    "unit_amount_decimal": "0.5",
                    "quantity": "10000.0000",
                    "amount_decimal": "5000",
                    "amount_cents": 5000,
                },
                {
                    "start": "10000.0000",
                    "up_to": None,
                    "unit_amount_decimal": "0.25",
                    "quantity": "1001.0000",
                    "amount_decimal": "250.25",
                    "amount_cents": 250,
                },
            ],
            "total_cents": 5250,
        }
    ],
    "total_cents": 5250,
}


@extend_schema_serializer(
    examples=[
        OpenApiExample("This month so far", value=_INVOICE_EXAMPLE, response_only=True),
        OpenApiExample(
            "Compared with Stripe (?compare=stripe)",
            value={
                **_INVOICE_EXAMPLE,
                "stripe": {
                    "total_cents": 5000,
                    "currency": "usd",
                    "period_start": "2026-12-01T00:00:00Z",
                    "period_end": "2027-01-01T00:00:00Z",
                    "lines": [
                        {
                            "meter": "api.request",
                            "stripe_price_id": "price_1Starter",
                            "quantity": "11000.0000",
                            "amount_cents": 5000,
                            "period_start": "2026-12-01T00:00:00Z",
                            "period_end": "2027-01-01T00:00:00Z",
                        }
                    ],
                },
                "differences": [
                    {
                        "meter": "api.request",
                        "field": "amount_cents",
                        "local": "5250",
                        "stripe": "5000",
                    },
                    {
                        "meter": "api.request",
                        "field": "quantity",
                        "local": "12001.0000",
                        "stripe": "11000",
                    },
                    {"meter": None, "field": "total_cents", "local": "5250", "stripe": "5000"},
                ],
                "matches_stripe": False,
            },
            response_only=True,
        ),
    ]
)
class UpcomingInvoiceSerializer(UsagePeriodSerializer):
    """What the organization will pay for its current billing period (``start``/``end``,
    ``period_source``: ``subscription`` or ``calendar_month``) on its plan: per meter the
    rating of the usage recorded here, and the total in integer cents. With
    ``?compare=stripe`` also ``stripe`` (Stripe's preview), ``differences`` and
    ``matches_stripe``."""

    period_source = serializers.ChoiceField(choices=["subscription", "calendar_month"])
    plan = serializers.CharField()
    plan_name = serializers.CharField()
    meters = InvoiceMeterSerializer(many=True)
    total_cents = serializers.IntegerField()
    stripe = StripePreviewSerializer(required=False)
    differences = DifferenceSerializer(many=True, required=False)
    matches_stripe = serializers.BooleanField(required=False)
