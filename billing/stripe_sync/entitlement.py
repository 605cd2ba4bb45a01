"""Entitlement: an organization whose subscription is ``unpaid`` or ``canceled`` may read
but not write.

``EntitlementMiddleware`` sits after ``tenancy.ratelimit.RateLimitMiddleware`` and before
``billing.idempotency.middleware.IdempotencyMiddleware`` and
``billing.middleware.UsageMiddleware`` (``settings.MIDDLEWARE``): a refused write is
counted by the rate limit like any request, is never stored under an Idempotency-Key (a
retry after the invoice is paid runs), and never reaches the usage middleware, so it is
not billed. ``past_due`` changes nothing (Stripe is still retrying the payment; Stripe
docs, "Subscription statuses").
"""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

from tenancy.context import request_organization
from tenancy.models import SubscriptionStatus

#: Statuses whose organization may not write (Stripe docs, "Subscription statuses").
INACTIVE_STATUSES = frozenset({SubscriptionStatus.UNPAID, SubscriptionStatus.CANCELED})
#: Methods that write (RFC 9110, 9.2.1: every method but these is "safe").
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Path segments under each ``API_ROUTES`` prefix that stay writable: billing (a firm must
#: be able to change its plan and report its usage) and auth (log in and out).
EXEMPT_SEGMENTS = ("billing/", "auth/")

INACTIVE_CODE = "subscription_inactive"


def write_refused(request) -> bool:
    """True when ``request`` is a write under ``settings.API_ROUTES`` (other than the
    exempt segments) by an organization whose ``subscription_status`` is inactive."""
    organization = request_organization(request)
    if organization is None or request.method not in WRITE_METHODS:
        return False
    if organization.subscription_status not in INACTIVE_STATUSES:
        return False
    for prefix in settings.API_ROUTES:
        if request.path_info.startswith(prefix):
            rest = request.path_info[len(prefix) :]
            return not rest.startswith(EXEMPT_SEGMENTS)
    return False


class EntitlementMiddleware:
    """402 ``{"detail", "code": "subscription_inactive"}`` for a refused write (see
    ``write_refused``); every other request passes untouched."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if write_refused(request):
            status = request_organization(request).subscription_status
            return JsonResponse(
                {
                    "detail": f"The subscription is {status}: the organization's data can "
                    "be read but not changed until it is paid (billing/ stays open).",
                    "code": INACTIVE_CODE,
                },
                status=402,
            )
        return self.get_response(request)
