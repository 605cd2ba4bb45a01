"""OpenAPI: document ``Idempotency-Key`` on every write of the tenant API (drf-spectacular).

``document_idempotency_key`` is a postprocessing hook (``SPECTACULAR_SETTINGS
["POSTPROCESSING_HOOKS"]``): one place for a rule that ``billing.idempotency`` applies to
every ``POST``/``PUT``/``PATCH``/``DELETE`` under ``API_ROUTES`` rather than per view.
"""

from django.conf import settings

from billing.idempotency.keys import HEADER, MAX_KEY_LENGTH, METHODS, REPLAYED_HEADER
from core.openapi import error_response

ERROR_COMPONENT = "IdempotencyError"

_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": (
        "Makes a retry safe (IETF draft-ietf-httpapi-idempotency-key-header-07). A unique "
        f"key of 1-{MAX_KEY_LENGTH} printable ASCII characters (e.g. a UUID), bare or as a "
        "quoted Structured Field String. The first request with a key runs; its answer "
        "(any status below 500) is stored for IDEMPOTENCY_KEY_TTL_HOURS (default 24) and "
        f"replayed to a retry with the same key and the same request, with `{REPLAYED_HEADER}: "
        "true`, without running or billing it again. Keys are per organization. Another "
        "request with the same key: 422 `idempotency_key_reused`; while the first still "
        "runs: 409 `idempotency_key_in_progress` with `Retry-After`; a malformed key: 400 "
        "`idempotency_key_invalid`."
    ),
}

_REPLAYED = {
    "description": f"`true` when this answer is a replay of the stored answer of the {HEADER}.",
    "schema": {"type": "string", "enum": ["true"]},
}


def _error_response(description: str, code: str) -> dict:
    return error_response(description, code, component=ERROR_COMPONENT)


def document_idempotency_key(result, generator, request, public):
    """Add to each authenticated write operation under ``settings.API_ROUTES`` of the
    OpenAPI document ``result`` (a dict): the optional ``Idempotency-Key`` header
    parameter, the ``Idempotent-Replayed`` header on its 2xx responses, and the 409
    (``idempotency_key_in_progress``, with ``Retry-After``) and 422
    (``idempotency_key_reused``) answers, with the ``IdempotencyError`` schema
    ``{"detail": str, "code": str}``. Operations without security (the token endpoints:
    no organization, so the header is ignored) are left as they are. Returns ``result``."""
    methods = {method.lower() for method in METHODS}
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = {
        "type": "object",
        "properties": {
            "detail": {"type": "string"},
            "code": {
                "type": "string",
                "enum": [
                    "idempotency_key_invalid",
                    "idempotency_key_in_progress",
                    "idempotency_key_reused",
                ],
            },
        },
        "required": ["detail", "code"],
    }
    for path, operations in result.get("paths", {}).items():
        if not any(path.startswith(prefix) for prefix in settings.API_ROUTES):
            continue
        for method, operation in operations.items():
            if method not in methods or not operation.get("security"):
                continue
            parameters = operation.setdefault("parameters", [])
            if not any(p.get("name") == HEADER and p.get("in") == "header" for p in parameters):
                parameters.append(dict(_PARAMETER))
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if str(status).startswith("2"):
                    response.setdefault("headers", {})[REPLAYED_HEADER] = dict(_REPLAYED)
            in_progress = _error_response(
                f"A request with this {HEADER} is still being processed; retry later.",
                "idempotency_key_in_progress",
            )
            in_progress["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
            }
            responses.setdefault("409", in_progress)
            responses.setdefault(
                "422",
                _error_response(
                    f"This {HEADER} was already used for a different request.",
                    "idempotency_key_reused",
                ),
            )
    return result
