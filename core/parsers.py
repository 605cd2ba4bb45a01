"""A bounded, strict JSON parser for the API (DRF ``DEFAULT_PARSER_CLASSES``).

DRF's own ``JSONParser`` reads the whole request stream, whatever its size (Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` applies only to form bodies), and Python's ``json``
accepts what JSON does not (RFC 8259): ``NaN``/``Infinity``, and lone surrogates
(``"\\ud800"``), which PostgreSQL cannot store. ``BoundedJSONParser`` refuses, before
anything reaches a serializer:

* a body over ``settings.API_MAX_JSON_BYTES`` (bytes; default 1 MiB): 413
  ``body_too_large``, from ``Content-Length`` before reading, else after reading at most
  limit + 1 bytes (a chunked body, which has no ``Content-Length``, never gets here: it
  is a 411, ``core.errors.LengthRequiredMiddleware``);
* bytes that are not UTF-8 (RFC 8259, 8.1), and text that is not JSON: 400 ``parse_error``;
* ``NaN``, ``Infinity``, ``-Infinity``: 400 ``json_constant``;
* arrays and objects nested deeper than ``MAX_DEPTH``: 400 ``json_too_deep`` (also
  instead of the ``RecursionError`` Python's parser raises thousands of levels down);
* a NUL character (U+0000) in a string or a key (PostgreSQL ``text`` cannot hold it,
  PostgreSQL manual 8.3): 400 ``json_nul_character``;
* a lone surrogate (U+D800-U+DFFF, not valid Unicode scalar values, RFC 8259 8.2): 400
  ``json_lone_surrogate``.

The API parses JSON only (``DEFAULT_PARSER_CLASSES``; another ``Content-Type`` is DRF's
415 ``unsupported_media_type``), except the document upload:
``BoundedMultiPartParser`` stops reading a multipart body while it streams in
(``MaxSizeUploadHandler``) past its ``limit()`` (``API_MAX_JSON_BYTES`` here;
``cases.uploads.DocumentMultiPartParser``: ``DOCUMENT_MAX_BYTES``).
"""

import json

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from rest_framework import exceptions, parsers

#: Deepest nesting of arrays and objects accepted (the API's payloads nest 2-3 levels).
MAX_DEPTH = 32

DEFAULT_MAX_JSON_BYTES = 1024 * 1024


class PayloadTooLarge(exceptions.APIException):
    """413 Content Too Large (RFC 9110, 15.5.14), ``code`` given by the raiser
    (``body_too_large`` for JSON, ``file_too_large`` for uploads)."""

    status_code = 413
    default_detail = "Request body too large."
    default_code = "body_too_large"


class JSONInputError(exceptions.ParseError):
    """400 for JSON that parses but that the API refuses (see the module docstring)."""


def max_json_bytes() -> int:
    """``settings.API_MAX_JSON_BYTES`` (int, bytes; default 1 MiB)."""
    return int(getattr(settings, "API_MAX_JSON_BYTES", DEFAULT_MAX_JSON_BYTES))


def _refuse_constant(name: str):
    raise JSONInputError(f"{name} is not a JSON number (RFC 8259, 6).", code="json_constant")


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise JSONInputError(
            "Strings must not contain the NUL character (U+0000).", code="json_nul_character"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONInputError(
            "Strings must not contain lone surrogates (U+D800-U+DFFF).",
            code="json_lone_surrogate",
        ) from None


def check_json_value(value, max_depth: int = MAX_DEPTH) -> None:
    """Walk a parsed JSON value (iteratively, no recursion) and raise ``JSONInputError``
    (400) for nesting deeper than ``max_depth`` (int; a scalar is depth 0, ``[]`` depth
    1), a NUL character or a lone surrogate in a string or object key."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item)
        elif isinstance(item, (list, dict)):
            if depth + 1 > max_depth:
                raise JSONInputError(
                    f"JSON nested deeper than {max_depth} levels.", code="json_too_deep"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_string(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def parse_json_bytes(raw: bytes):
    """Parse ``raw`` (bytes, UTF-8 JSON) strictly; return the Python value.

    Raises:
        rest_framework.exceptions.ParseError: 400 ``parse_error`` (not UTF-8, not JSON)
            or ``JSONInputError`` (see the module docstring).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise exceptions.ParseError("JSON must be UTF-8 (RFC 8259, 8.1).") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONInputError(
            f"JSON nested deeper than {MAX_DEPTH} levels.", code="json_too_deep"
        ) from None
    except ValueError as exc:
        raise exceptions.ParseError(f"JSON parse error - {exc}") from None
    check_json_value(value)
    return value


class BoundedJSONParser(parsers.JSONParser):
    """DRF's ``JSONParser`` with a size limit and the strict rules of the module docstring.

    Raises:
        PayloadTooLarge: 413 ``body_too_large``, body over ``API_MAX_JSON_BYTES``.
        rest_framework.exceptions.ParseError: 400 (``parse_error``, ``json_constant``,
            ``json_too_deep``, ``json_nul_character``, ``json_lone_surrogate``).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = max_json_bytes()
        request = (parser_context or {}).get("request")
        if request is not None and declared_length(request) > limit:
            raise self._too_large(limit)
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise self._too_large(limit)
        if not raw:
            raise exceptions.ParseError("JSON parse error - empty body.")
        return parse_json_bytes(raw)

    @staticmethod
    def _too_large(limit: int) -> PayloadTooLarge:
        return body_too_large(limit)


def body_too_large(limit: int) -> PayloadTooLarge:
    """The 413 ``body_too_large`` of a body over ``limit`` bytes."""
    return PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")


def declared_length(request) -> int:
    """The request's ``Content-Length`` (int, bytes; 0 when absent or malformed)."""
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except (TypeError, ValueError):
        return 0


#: Attribute set on the Django request when ``MaxSizeUploadHandler`` stopped its upload:
#: the limit (int, bytes).
UPLOAD_EXCEEDED_ATTR = "upload_limit_exceeded"

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class MaxSizeUploadHandler(FileUploadHandler):
    """Counts the file bytes of one request (all its files) and stops the upload past
    ``limit`` (int, bytes; default ``settings.DOCUMENT_MAX_BYTES``, the largest upload the
    API takes): Django's ``StopUpload(connection_reset=True)`` ends the parsing, closes the
    partial files and reads no more of the body, and the request gets
    ``UPLOAD_EXCEEDED_ATTR`` (the limit) for the view to answer 413. First in
    ``settings.FILE_UPLOAD_HANDLERS``, so it also guards a body parsed before the view
    (the ``Idempotency-Key`` fingerprint), and the bytes past the limit never reach the
    spooling handlers."""

    def __init__(self, request=None, limit: int | None = None):
        super().__init__(request)
        if limit is None:
            limit = int(getattr(settings, "DOCUMENT_MAX_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
        self.limit = limit
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            if self.request is not None:
                setattr(self.request, UPLOAD_EXCEEDED_ATTR, self.limit)
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int):
        return None  # the next handler builds the file


def upload_limit_exceeded(request) -> int | None:
    """The limit (bytes) ``MaxSizeUploadHandler`` stopped ``request``'s upload at (a DRF
    or Django request), or ``None``."""
    django_request = getattr(request, "_request", request)
    return getattr(django_request, UPLOAD_EXCEEDED_ATTR, None)


class BoundedMultiPartParser(parsers.MultiPartParser):
    """DRF's ``MultiPartParser`` whose files may hold at most ``limit()`` bytes in all,
    refused from ``Content-Length`` (over the limit plus ``overhead_bytes``) before reading
    and else while streaming (``MaxSizeUploadHandler``). Non-file fields stay under
    Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``.

    Raises:
        PayloadTooLarge: 413, ``too_large(limit)`` (``body_too_large`` here).
        rest_framework.exceptions.ParseError: 400, a malformed multipart body.
    """

    #: Bytes of a multipart body beyond its files' (boundaries, part headers, fields).
    overhead_bytes = 64 * 1024

    def limit(self) -> int:
        """Bytes the request's files may hold in all (``API_MAX_JSON_BYTES`` here)."""
        return max_json_bytes()

    def too_large(self, limit: int) -> PayloadTooLarge:
        """The 413 to raise."""
        return body_too_large(limit)

    def parse(self, stream, media_type=None, parser_context=None):
        limit = self.limit()
        request = parser_context["request"]
        if declared_length(request) > limit + self.overhead_bytes:
            raise self.too_large(limit)
        guard = MaxSizeUploadHandler(getattr(request, "_request", request), limit=limit)
        request.upload_handlers.insert(0, guard)
        result = super().parse(stream, media_type, parser_context)
        if guard.exceeded or upload_limit_exceeded(request) is not None:
            raise self.too_large(limit)
        return result
