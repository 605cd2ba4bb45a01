"""``IdempotencyMiddleware``: the rules of the package doc, for the tenant API's writes."""

import logging

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.http import JsonResponse
from django.http.multipartparser import MultiPartParserError

from billing.idempotency.keys import (
    HEADER,
    IN_PROGRESS_RETRY_AFTER,
    METHODS,
    InvalidIdempotencyKey,
    idempotency_key_claim,
    idempotency_key_store,
    parse_key,
    replayed_response,
    request_fingerprint,
)
from billing.middleware import EVENT_SINK_ATTR
from core.db import transaction_aborted
from tenancy.context import request_organization

logger = logging.getLogger("billing.idempotency")


def _error(detail: str, code: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


class IdempotencyMiddleware:
    """``Idempotency-Key`` for the tenant API's writes (rules in the module doc).

    Placed after ``TenantMiddleware`` (it needs the organization and runs in the
    request's transaction) and ``RateLimitMiddleware`` (a replay is counted), and before
    ``UsageMiddleware``: a replay, a 409, a 422 or a 400 from here never reaches the usage
    middleware, so it is not billed; the first execution is billed as any request.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        raw = request.headers.get(HEADER) if request.method in METHODS else None
        organization = request_organization(request)
        if raw is None or organization is None:
            return self.get_response(request)
        if not any(request.path_info.startswith(prefix) for prefix in settings.API_ROUTES):
            return self.get_response(request)
        try:
            key = parse_key(raw)
        except InvalidIdempotencyKey as exc:
            return _error(str(exc), "idempotency_key_invalid", 400)
        try:
            fingerprint = request_fingerprint(request)
        except MultiPartParserError as exc:
            return _error(f"Multipart form parse error - {exc}", "parse_error", 400)
        except (TooManyFieldsSent, TooManyFilesSent):  # as the view answers them (core.errors)
            return _error("Too many fields or files.", "too_many_fields", 400)
        claim = idempotency_key_claim(organization=organization, key=key, fingerprint=fingerprint)
        if claim.state == "busy":
            response = _error(
                "A request with this Idempotency-Key is still being processed; retry later.",
                "idempotency_key_in_progress",
                409,
            )
            response["Retry-After"] = str(IN_PROGRESS_RETRY_AFTER)
            return response
        if claim.state == "reused":
            return _error(
                "This Idempotency-Key was already used for a different request.",
                "idempotency_key_reused",
                422,
            )
        if claim.state == "replay":
            logger.info("Idempotency-Key replay (%s %s)", request.method, request.path)
            return replayed_response(claim.stored)
        events: list = []
        setattr(request, EVENT_SINK_ATTR, events)  # the usage event is written with the key
        response = self.get_response(request)
        if response.status_code < 500 and not transaction_aborted():
            idempotency_key_store(
                organization=organization,
                acting_user=request.user,
                key=key,
                fingerprint=fingerprint,
                request=request,
                response=response,
                event=events[0] if events else None,
            )
        return response
