"""Stable JSON errors for the API.

Every API error body is either ``{"detail": str, "code": str}`` or, for
validation errors, ``{"detail": "Invalid input.", "code": "invalid",
"errors": {field: [messages]}}``. API paths (``/api/``) never get an HTML page,
not even for a 404 or 500 raised outside DRF with ``DEBUG`` off.

Stable codes beyond DRF's own (``parse_error``, ``not_authenticated``,
``permission_denied``, ``not_found``, ``method_not_allowed``, ``unsupported_media_type``,
``throttled``, ...): ``body_too_large`` and ``file_too_large`` (413), the strict JSON
parser's ``json_*`` codes (400, ``core.parsers``), ``unsupported_file_type`` and
``file_type_mismatch`` (415, ``cases.uploads``), ``invalid_value`` (400: a value the
database refused, ``DataError``), ``too_many_fields`` (400), ``bad_request`` (400:
e.g. a disallowed ``Host``), ``server_error`` (500).
"""

from django.core.exceptions import (
    PermissionDenied as DjangoPermissionDenied,
)
from django.core.exceptions import (
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import DataError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.views import exception_handler

from core.db import transaction_aborted


class InvalidValue(exceptions.APIException):
    """400 ``invalid_value``: a value that passed validation but that PostgreSQL refused
    (``DataError``, SQLSTATE class 22, PostgreSQL manual, Appendix A), e.g. a date
    outside the range of ``timestamptz`` once its offset is applied."""

    status_code = 400
    default_detail = "A value in the request is out of range or invalid."
    default_code = "invalid_value"


class ContentTooLarge(exceptions.APIException):
    """413 ``body_too_large`` (Django's ``RequestDataTooBig``: form fields over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``)."""

    status_code = 413
    default_detail = "Request body too large."
    default_code = "body_too_large"


def _translate(exc):
    """Django and database exceptions that DRF leaves to Django (a 500 or an HTML page),
    as the ``APIException`` the client should see; ``exc`` itself otherwise."""
    if isinstance(exc, Http404):
        return exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        return ContentTooLarge()
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return exceptions.ParseError("Too many fields or files.", code="too_many_fields")
    if isinstance(exc, DataError) and not transaction_aborted():
        # only when the statement's effects are gone (rolled back to the view's savepoint,
        # tenancy.viewsets, or no transaction): else the request must fail as a whole (500)
        return InvalidValue()
    return exc


def api_exception_handler(exc, context):
    """DRF exception handler that adds a machine-readable ``code`` to every error
    (``exc``: the exception a view raised; ``context``: DRF's). Returns the ``Response``,
    or ``None`` for an exception that stays a 500 (DRF re-raises it)."""
    exc = _translate(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None
    request = context.get("request")
    if request is not None:
        # an error is JSON even where a success may be the browsable API (DEBUG): DRF renders
        # the response with the renderer set on the request
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
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


#: Django's own HTML error pages under /api/ -> the API's ``(detail, code)``.
_API_ERRORS = {
    400: ("Bad request.", "bad_request"),
    403: ("Permission denied.", "permission_denied"),
    404: ("Not found.", "not_found"),
    500: ("Internal server error.", "server_error"),
}


class ApiJsonErrorMiddleware:
    """Under ``/api/``, an HTML error page becomes the API's JSON error of the same status
    (``{"detail", "code"}``): with ``DEBUG`` Django answers a disallowed ``Host`` or an
    uncaught exception with its technical HTML page instead of the ``handler400``/
    ``handler500`` below. Placed outside ``SecurityMiddleware`` and ``CommonMiddleware``,
    where the host is checked; every other response passes unchanged."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path_info.startswith("/api/")
            and response.get("Content-Type", "").startswith("text/html")
        ):
            detail, code = _API_ERRORS.get(
                response.status_code, (f"HTTP {response.status_code}.", "error")
            )
            return json_error(detail, code, response.status_code)
        return response


def json_error(detail: str, code: str, status_code: int) -> JsonResponse:
    """A JSON error response in the API's shape."""
    return JsonResponse({"detail": detail, "code": code}, status=status_code)


class LengthRequiredMiddleware:
    """``411 {"code": "length_required"}`` for a request whose body is chunked
    (``Transfer-Encoding: chunked``) and has no ``Content-Length``; every other request
    passes untouched.

    Django reads at most ``CONTENT_LENGTH`` bytes of a WSGI request's body, and none when
    it is absent (``WSGIRequest``'s ``LimitedStream``), so a chunked body, which gunicorn
    passes on without a length, reached the view as an empty one: a chunked ``PATCH``
    answered 200 and changed nothing, a chunked upload of 3 MB was a 400 "field
    required". Refusing it loses nothing: RFC 9110, 15.5.12, "411 Length Required: the
    server refuses to accept the request without a defined Content-Length", and the
    client can send it again with one. Not billed: nothing was served."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        meta = request.META
        if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and not meta.get(
            "CONTENT_LENGTH"
        ):
            return json_error(
                "A request body needs a Content-Length: chunked bodies are not accepted.",
                "length_required",
                status.HTTP_411_LENGTH_REQUIRED,
            )
        return self.get_response(request)


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
    JSON ``{"detail": "Bad request.", "code": "bad_request"}``; Django's
    ``RequestDataTooBig`` (a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` read by a
    middleware) is a 413 ``body_too_large``."""
    if isinstance(exception, RequestDataTooBig):
        return json_error(
            ContentTooLarge.default_detail,
            "body_too_large",
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return json_error("Bad request.", "bad_request", status.HTTP_400_BAD_REQUEST)


def csrf_failure(request, reason=""):
    """``CSRF_FAILURE_VIEW``: under ``/api/`` the API's JSON 403 (``csrf_failed``; API
    clients authenticate with bearer tokens, only session-authenticated requests can fail
    it); elsewhere (the admin) Django's own page."""
    if request.path_info.startswith("/api/"):
        return json_error(
            f"CSRF verification failed: {reason}", "csrf_failed", status.HTTP_403_FORBIDDEN
        )
    from django.views.csrf import csrf_failure as django_csrf_failure

    return django_csrf_failure(request, reason=reason)
