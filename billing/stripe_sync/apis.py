"""``POST billing/subscription/`` (an owner changes plan) and ``POST billing/stripe/webhook/``
(Stripe's deliveries). Thin views over ``subscriptions`` and ``webhooks``."""

from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.middleware import not_billed
from billing.stripe_sync.serializers import (
    SubscriptionChangeResultSerializer,
    SubscriptionChangeSerializer,
    WebhookAckSerializer,
)
from billing.stripe_sync.subscriptions import SubscriptionChangeRefused, subscription_change_request
from billing.stripe_sync.webhooks import WebhookRejected, webhook_receive
from tenancy.permissions import OwnersOnly
from tenancy.viewsets import TenantAPIMixin


class SubscriptionApi(TenantAPIMixin, APIView):
    """``POST subscription/`` ``{"plan_tier": "pro"}``: owners only (403 ``role_forbidden``
    otherwise). Asks Stripe, through a job, to move the subscription to that plan's prices
    (Stripe's proration applies), or to create the customer and a subscription when there
    is none (or only a canceled one); 202 at once. The organization's ``plan_tier`` changes
    when Stripe confirms, never before. 400 ``plan_tier_unknown``; 409 ``stripe_disabled``,
    ``plan_not_priced``."""

    permission_classes = [IsAuthenticated, OwnersOnly]

    @extend_schema(
        request=SubscriptionChangeSerializer,
        responses={
            202: SubscriptionChangeResultSerializer,
            400: OpenApiResponse(description="plan_tier_unknown, or a missing plan_tier"),
            409: OpenApiResponse(description="stripe_disabled or plan_not_priced"),
        },
    )
    def post(self, request):
        body = SubscriptionChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = subscription_change_request(
                organization=self.organization,
                acting_user=request.user,
                plan_tier=body.validated_data["plan_tier"],
            )
        except SubscriptionChangeRefused as exc:
            return Response({"detail": str(exc), "code": exc.code}, status=exc.status)
        return Response(SubscriptionChangeResultSerializer(result).data, status=202)


class StripeWebhookApi(APIView):
    """``POST stripe/webhook/``: Stripe's event deliveries (``billing.stripe_sync.webhooks``).

    No JWT (``authentication_classes`` empty: the ``Stripe-Signature`` header is the
    credential), no CSRF (DRF views are exempt), never metered (``not_billed``, and no
    organization), not rate-limited by plan (no organization). 200 ``{"received": true,
    "duplicate": bool}`` once stored; 400 ``{"detail", "code"}`` for
    ``webhook_not_configured``, ``signature_missing``, ``signature_invalid``,
    ``payload_malformed``; 413 ``payload_too_large`` over Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        # A Stripe event object (Stripe API reference, "The Event object"): verified by
        # its signature, never by a schema, so any JSON object is documented.
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter(
                "Stripe-Signature",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=True,
                description="t=<unix time>,v1=<HMAC-SHA256 of 't.payload'> (Stripe's scheme).",
            )
        ],
        responses={
            200: WebhookAckSerializer,
            400: OpenApiResponse(description="a missing or bad signature, a malformed body"),
        },
        auth=[],
    )
    def post(self, request):
        try:
            payload = request.body
        except RequestDataTooBig:
            return Response(
                {"detail": "The body is too large.", "code": "payload_too_large"}, status=413
            )
        try:
            received = webhook_receive(
                payload=payload, signature=request.headers.get("Stripe-Signature")
            )
        except WebhookRejected as exc:
            return Response({"detail": str(exc), "code": exc.code}, status=400)
        return Response({"received": True, "duplicate": not received.created})


#: The view function of the webhook route: never billed (``UsageMiddleware``).
stripe_webhook_view = not_billed(StripeWebhookApi.as_view())
