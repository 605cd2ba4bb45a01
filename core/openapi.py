"""OpenAPI generation (drf-spectacular): one tag per API resource.

``TaggedAutoSchema`` is the project's ``DEFAULT_SCHEMA_CLASS``. It tags an operation
by the first segment of its path after the version (``/api/v1/cases/{id}/`` ->
``cases``), matched case-insensitively against the names in
``SPECTACULAR_SETTINGS["TAGS"]`` (``"Cases"``), so a new endpoint under an existing
resource lands under its tag without any decorator. A segment with no declared tag
gets its title-cased self. ``extend_schema(tags=[...])`` on a view still wins.
"""

import copy
import re

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import spectacular_settings

_VERSION = re.compile(r"^v\d+$")


def path_resource(path: str) -> str | None:
    """The resource segment of an API path: the first segment after ``api`` and a
    version segment (``v1``), without path parameters; ``None`` if there is none.

    >>> path_resource("/api/v1/billing/usage-summary/{organization_id}/")
    'billing'
    """
    segments = [s for s in path.strip("/").split("/") if s and not s.startswith("{")]
    if segments and segments[0] == "api":
        segments = segments[1:]
    if segments and _VERSION.match(segments[0]):
        segments = segments[1:]
    return segments[0] if segments else None


class TaggedAutoSchema(AutoSchema):
    """drf-spectacular's ``AutoSchema`` with resource tags (see the module docstring)."""

    def get_tags(self) -> list[str]:
        """``[tag name]`` for this operation's path (str list of one element)."""
        resource = path_resource(self.path)
        if resource is None:
            return super().get_tags()
        declared = {tag["name"].lower(): tag["name"] for tag in spectacular_settings.TAGS}
        return [declared.get(resource.lower(), resource.replace("-", " ").title())]


#: The schema component of every error body (``core.errors``).
ERROR_COMPONENT = "Error"

_ERROR_SCHEMA = {
    "type": "object",
    "description": "The API's error shape (core.errors): `detail` for people, `code` for "
    "programs; validation errors add `errors`, the messages per field.",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
    },
    "required": ["detail", "code"],
}

#: Status -> (description, example code) of the answers every operation may give.
ERROR_ANSWERS = {
    "400": ("Invalid input: a field, a query parameter, or a malformed body.", "invalid"),
    "401": ("No valid bearer token (missing, expired, revoked).", "not_authenticated"),
    "403": (
        "The caller's role or organization does not permit this (role_forbidden, "
        "organization_forbidden, organization_required).",
        "role_forbidden",
    ),
    "404": ("No such object in the active organization, or no such page.", "not_found"),
    "411": (
        "A chunked body without Content-Length (Transfer-Encoding: chunked): send it with one.",
        "length_required",
    ),
    "413": (
        "Body over API_MAX_JSON_BYTES (body_too_large) or upload over DOCUMENT_MAX_BYTES "
        "(file_too_large).",
        "body_too_large",
    ),
    "415": (
        "A Content-Type the endpoint does not parse, or an upload of a type not accepted "
        "(unsupported_file_type, file_type_mismatch).",
        "unsupported_media_type",
    ),
    "429": ("Over the rate limit; retry after Retry-After seconds.", "throttled"),
}

_INTEGER_HEADER = {"schema": {"type": "integer", "minimum": 0}}
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {
        "description": "Requests per window of the organization's plan (IETF "
        "draft-ietf-httpapi-ratelimit-headers); absent when not limited.",
        **_INTEGER_HEADER,
    },
    "RateLimit-Remaining": {"description": "Requests left in the window.", **_INTEGER_HEADER},
    "RateLimit-Reset": {
        "description": "Seconds until the quota is whole again.",
        **_INTEGER_HEADER,
    },
}
RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait (RFC 9110, 10.2.3).", **_INTEGER_HEADER}
}

_BODY_METHODS = {"post", "put", "patch"}


def error_response(description: str, code: str, *, component: str = ERROR_COMPONENT) -> dict:
    """An OpenAPI response object: JSON of the schema ``component`` (the project's error
    shape, ``{"detail", "code"}``) with an example of ``code``."""
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{component}"},
                "example": {"detail": description, "code": code},
            }
        },
    }


def _answer(status: str) -> dict:
    return error_response(*ERROR_ANSWERS[status])


def _statuses(path: str, method: str, operation: dict) -> list[str]:
    """The error statuses ``operation`` (``method`` on ``path``) can answer."""
    secured = bool(operation.get("security"))
    params = {p.get("name") for p in operation.get("parameters", [])}
    statuses = ["400"]  # any query parameter, body, or X-Organization-ID may be malformed
    if secured or path.startswith("/api/v1/auth/"):
        statuses.append("401")
    if secured:
        statuses.append("403")
    if "{" in path or "page" in params:
        statuses.append("404")
    if method in _BODY_METHODS:
        statuses += ["411", "413", "415"]
    if secured:  # the plan-tier limit; the token endpoints document their login throttle
        statuses.append("429")
    return statuses


def _allow_empty_filters(operation: dict) -> None:
    """A list's query parameters (filters, ``search``, ``ordering``, ``page``,
    ``page_size``) treat an empty value as absent (django-filter and DRF skip it): say so
    with ``allowEmptyValue`` (OpenAPI 3.0, Parameter Object)."""
    parameters = operation.get("parameters", [])
    if not any(p.get("name") == "page" and p.get("in") == "query" for p in parameters):
        return
    for parameter in parameters:
        if parameter.get("in") == "query" and not parameter.get("required"):
            parameter["allowEmptyValue"] = True


#: A string with a character that is not whitespace (Python's ``str.isspace``).
NOT_BLANK = r"\S"


def _require_non_blank(schemas: dict) -> None:
    """DRF's ``CharField`` strips whitespace before its ``allow_blank=False`` check, so a
    required text (``minLength`` >= 1) made only of whitespace is a 400: request
    components (``...Request``, drf-spectacular's ``COMPONENT_SPLIT_REQUEST``) say so with
    ``pattern``. Strings with a ``format``, ``enum`` or ``pattern`` are left alone."""
    for name, component in schemas.items():
        if not name.endswith("Request"):
            continue
        for prop in component.get("properties", {}).values():
            if (
                prop.get("type") == "string"
                and prop.get("minLength", 0) >= 1
                and not {"format", "enum", "pattern"} & set(prop)
            ):
                prop["pattern"] = NOT_BLANK


def document_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``)
    that makes the schema ``result`` (a dict) say every answer an API operation can give:
    for each operation under ``settings.API_ROUTES`` ``allowEmptyValue`` on a list's query
    parameters (``_allow_empty_filters``), ``pattern`` on non-blank request strings
    (``_require_non_blank``), the error statuses of ``_statuses``
    (400/401/403/404/411/413/415/429, with the ``Error`` schema; an operation's own
    description of a status wins), ``Retry-After`` on its 429, and the optional
    ``RateLimit-*`` headers on every response of an authenticated operation. The 409 and
    422 of ``Idempotency-Key`` come from ``billing.schema``. Returns ``result``."""
    from django.conf import settings

    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = copy.deepcopy(_ERROR_SCHEMA)
    _require_non_blank(schemas)
    for path, operations in result.get("paths", {}).items():
        if not any(path.startswith(prefix) for prefix in settings.API_ROUTES):
            continue
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            _allow_empty_filters(operation)
            for status in _statuses(path, method, operation):
                responses.setdefault(status, _answer(status))
            if "429" in responses:
                responses["429"].setdefault("headers", {}).update(copy.deepcopy(RETRY_AFTER_HEADER))
            if operation.get("security"):
                for response in responses.values():
                    response.setdefault("headers", {}).update(copy.deepcopy(RATE_LIMIT_HEADERS))
    return result
