"""Stable JSON errors for the API.

Every API error body is either ``{"detail": str, "code": str}`` or, for
validation errors, ``{"detail": "Invalid input.", "code": "invalid",
"errors": {field: [messages]}}``. API paths (``/api/``) never get an HTML page,
not even for a 404 or 500 raised outside DRF with ``DEBUG`` off.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.views import exception_handler


def api_exception_handler(exc, context):
    """DRF exception handler that adds a machine-readable ``code`` to every error."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "detail": "Invalid input.",
            "code": "invalid",
            "errors": response.data,
        }
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        if isinstance(codes, dict):  # e.g. simplejwt's InvalidToken: {"detail", "code", ...}
            codes = codes.get("code", exc.default_code)
        code = codes if isinstance(codes, str) else exc.default_code
        detail = (
            response.data.get("detail", str(exc.detail))
            if isinstance(response.data, dict)
            else exc.detail
        )
        response.data = {"detail": detail, "code": code}
    return response


def json_error(detail: str, code: str, status_code: int) -> JsonResponse:
    """A JSON error response in the API's shape."""
    return JsonResponse({"detail": detail, "code": code}, status=status_code)


def handler404(request, exception=None):
    """404 page: JSON for API paths and everywhere else (this service has no HTML site)."""
    return json_error("Not found.", "not_found", status.HTTP_404_NOT_FOUND)


def handler500(request):
    """500 page: JSON, never a traceback."""
    return json_error(
        "Internal server error.", "server_error", status.HTTP_500_INTERNAL_SERVER_ERROR
    )


def handler403(request, exception=None):
    """403 page (a ``PermissionDenied`` raised outside DRF): JSON
    ``{"detail": "Permission denied.", "code": "permission_denied"}``."""
    return json_error("Permission denied.", "permission_denied", status.HTTP_403_FORBIDDEN)


def handler400(request, exception=None):
    """400 page (e.g. ``SuspiciousOperation`` or a disallowed host raised outside DRF):
    JSON ``{"detail": "Bad request.", "code": "bad_request"}``."""
    return json_error("Bad request.", "bad_request", status.HTTP_400_BAD_REQUEST)
