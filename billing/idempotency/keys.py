"""The protocol of ``Idempotency-Key`` (see the package doc): the key, the request's
fingerprint, the claim (advisory lock and lookup, one round trip), the stored answer and
its replay."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.db.transaction import TransactionManagementError
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from django.utils import timezone
from rest_framework.utils.mediatypes import media_type_matches

from billing.middleware import event_not_written
from billing.models import IdempotencyKey
from billing.services import RequiredWriteFailed, event_insert_guarded
from core.db import psycopg_cursor
from tenancy.context import request_organization

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY_LENGTH = 255
#: Response headers stored with a key and replayed (the rest are added again by the
#: middleware of the replay: request ids, timing, rate limits).
STORED_HEADERS = ("Content-Type", "Location", "Allow", "Content-Language", "Content-Disposition")
#: Seconds a client is asked to wait (``Retry-After``) when its key is still in progress.
IN_PROGRESS_RETRY_AFTER = 1

_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")
_LOCK_NAMESPACE = "idempotency-key"


class InvalidIdempotencyKey(ValueError):
    """The header is not a usable key (the message says why); the API answers 400."""


def parse_key(raw: str) -> str:
    """The key in an ``Idempotency-Key`` header value ``raw`` (str).

    A value in double quotes is the draft's Structured Field String (RFC 8941, 3.3.3):
    the quotes are removed and ``\\"``/``\\\\`` unescaped. Returns the key (1-255
    printable ASCII characters).

    Raises:
        InvalidIdempotencyKey: empty, longer than 255 characters, or not printable ASCII.
    """
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\([\\\"])", r"\1", value[1:-1])
    if not value:
        raise InvalidIdempotencyKey(f"{HEADER} must not be empty.")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(f"{HEADER} must be at most {MAX_KEY_LENGTH} characters.")
    if not _PRINTABLE.match(value):
        raise InvalidIdempotencyKey(f"{HEADER} must be printable ASCII characters.")
    return value


def _file_digest(upload) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():  # streamed: an upload is never held in memory at once
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


def _multipart_digest(request) -> str:
    """SHA-256 (hex) of a multipart body's parts: each form field's values and, for each
    file, its field, file name, content type and the SHA-256 of its bytes, the parts of
    one field in the order sent (an upload keeps its field's last file, so ``[X, Y]`` and
    ``[Y, X]`` are different requests). Not of the raw body, whose random boundary differs
    on every retry of most clients. A ``POST`` is parsed by Django
    (``request.POST``/``FILES``, which DRF then reuses); another method with Django's
    parser, its result left on the request for DRF the same way.

    Raises:
        MultiPartParserError: the body is not valid multipart.
    """
    if request.method == "POST":
        fields, files = request.POST, request.FILES
    else:
        fields, files = request.parse_file_upload(request.META, request)
        request._post, request._files = fields, files
    parts = {
        "fields": sorted((name, fields.getlist(name)) for name in fields),
        "files": [
            (name, [(u.name, u.content_type or "", _file_digest(u)) for u in files.getlist(name)])
            for name in sorted(files)
        ],
    }
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def view_parses_multipart(request) -> bool:
    """Whether the view that ``request`` is routed to reads a multipart body for its
    method: a DRF view whose parsers for this request (``get_parsers()``) include one for
    ``multipart/form-data``, or a plain Django view (which reads ``request.POST``).

    Only then may the fingerprint parse the body before the view. Parsed for a view that
    takes JSON only, the body was gone when DRF looked for it: DRF then reads an empty
    body instead of answering 415, so a multipart ``PATCH`` with a key changed nothing and
    answered 200 (DRF docs, "Parsers": a request whose media type no parser of the view
    handles is ``415 Unsupported Media Type``)."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return True
    view_class = getattr(match.func, "cls", None)
    if view_class is None or not hasattr(view_class, "get_parsers"):
        return True
    view = view_class(**getattr(match.func, "initkwargs", {}))
    view.request, view.args, view.kwargs = request, match.args, match.kwargs
    return any(
        media_type_matches(parser.media_type, "multipart/form-data")
        for parser in view.get_parsers()
    )


def request_fingerprint(request) -> str:
    """SHA-256 (64 hex characters) identifying what ``request`` asks for: organization,
    user, method, path (the routed one, ``path_info``), raw query string, content type,
    and the SHA-256 of the body (for multipart to a view that parses it, of each part:
    ``_multipart_digest``; otherwise of the raw body). A retry must match it exactly.

    Reads the body (at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes, Django's limit; files
    of a multipart upload are streamed), which the view then reads from Django's cache.

    Raises:
        MultiPartParserError: a malformed multipart body.
        django.core.exceptions.RequestDataTooBig: the body is over Django's limit.
    """
    if request.content_type == "multipart/form-data" and view_parses_multipart(request):
        body_digest = _multipart_digest(request)
    else:
        body_digest = hashlib.sha256(request.body).hexdigest()
    user = getattr(request, "user", None)
    parts = [
        str(request_organization(request).pk),
        str(getattr(user, "pk", "") or ""),
        request.method,
        request.path_info,
        request.META.get("QUERY_STRING", ""),
        request.content_type or "",
        body_digest,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _lock_key(organization_id, key: str) -> int:
    """The advisory lock (a positive ``bigint``, 60 bits of SHA-256) of ``key`` in its
    organization. A collision of two keys only makes one of them wait for a 409."""
    text = f"{_LOCK_NAMESPACE}:{organization_id}:{key}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class Claim:
    """The outcome of ``idempotency_key_claim``: ``state`` is ``"new"`` (this request runs
    and stores its response), ``"busy"`` (another request with the key is in progress),
    ``"reused"`` (stored for another fingerprint) or ``"replay"`` (``stored`` holds the
    stored ``(status_code, headers dict, body bytes)``)."""

    state: str
    stored: tuple[int, dict, bytes] | None = None


_CLAIM_SQL = (
    "SELECT pg_try_advisory_xact_lock(%s); "
    "SELECT fingerprint, status_code, response_headers, response_body "
    "FROM billing_idempotency_keys "
    "WHERE organization_id = %s AND key = %s AND expires_at > %s"
)


def idempotency_key_claim(*, organization, key: str, fingerprint: str, now=None) -> Claim:
    """Take ``key`` of ``organization`` for the current request, or say why not; ONE round
    trip (see the module doc): ``pg_try_advisory_xact_lock`` on the key, then its
    unexpired stored row, read with a snapshot taken after the lock.

    Must run inside the request's transaction: the lock is held until it ends.

    Returns:
        a ``Claim``: when an unexpired row exists (the key's first request finished),
        ``replay`` (same ``fingerprint``) or ``reused`` (another one), whether or not the
        lock was granted (another replay of the key may hold it: replays never wait for
        or refuse each other); with no row, ``new`` if the lock was granted, else
        ``busy`` (the key's first request is still running).
    Raises:
        TransactionManagementError: called outside a transaction.
    """
    if not connection.in_atomic_block:
        raise TransactionManagementError("idempotency_key_claim runs in the request's transaction")
    params = [_lock_key(organization.pk, key), organization.pk, key, now or timezone.now()]
    with psycopg_cursor(psycopg.ClientCursor) as cursor:
        cursor.execute(_CLAIM_SQL, params)
        (locked,) = cursor.fetchone()
        cursor.nextset()
        row = cursor.fetchone()
    if row is None:
        return Claim("new" if locked else "busy")
    stored_fingerprint, status_code, headers, body = row
    if stored_fingerprint != fingerprint:
        return Claim("reused")
    if isinstance(headers, str):
        headers = json.loads(headers)
    return Claim("replay", (status_code, headers or {}, bytes(body or b"")))


_UPDATED_ON_CONFLICT = (
    "user",
    "fingerprint",
    "request_id",
    "method",
    "path",
    "status_code",
    "response_headers",
    "response_body",
    "created_at",
    "expires_at",
)


def _store_statement(row: IdempotencyKey) -> tuple[str, list]:
    """The ``INSERT ... ON CONFLICT (organization_id, key) DO UPDATE`` of ``row`` as
    Django's ORM compiles it for ``bulk_create(update_conflicts=True)`` (an expired row of
    the key, not purged yet, is replaced), as ``(sql, params)``."""
    opts = IdempotencyKey._meta
    query = InsertQuery(
        IdempotencyKey,
        on_conflict=OnConflict.UPDATE,
        update_fields=[opts.get_field(name) for name in _UPDATED_ON_CONFLICT],
        unique_fields=[opts.get_field("organization"), opts.get_field("key")],
    )
    query.insert_values(opts.concrete_fields, [row])
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    return sql, list(params)


def idempotency_key_store(
    *, organization, acting_user, key: str, fingerprint: str, request, response, event=None
) -> None:
    """Store ``response`` (status, ``STORED_HEADERS``, body) under ``key`` of
    ``organization`` for ``IDEMPOTENCY_KEY_TTL_HOURS``, in the current transaction (the
    request's: the row commits, or rolls back, with the request's own writes), with
    ``_store_statement``. A streaming response is stored without its body.

    ``event``: the request's usage event (a built ``BillingEvent``), handed over by
    ``UsageMiddleware``. Written in the same round trip (``event_insert_guarded(event,
    first=<the store>)``) under the usage middleware's failure policy: if only the event
    fails, it is counted and logged (``event_not_written``) and the answer stays stored.

    Raises:
        django.db.DatabaseError (``RequiredWriteFailed`` with an event): the answer could
            not be stored; the request must fail with it (its transaction rolls back), or a
            retry would run it a second time.
    """
    now = timezone.now()
    body = b"" if getattr(response, "streaming", False) else bytes(response.content)
    row = IdempotencyKey(
        organization=organization,
        key=key,
        user=acting_user if getattr(acting_user, "is_authenticated", False) else None,
        fingerprint=fingerprint,
        request_id=getattr(request, "request_id", "") or "",
        method=request.method,
        path=request.get_full_path_info(),
        status_code=response.status_code,
        response_headers={name: response[name] for name in STORED_HEADERS if name in response},
        response_body=body,
        created_at=now,
        expires_at=now + timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS),
    )
    statement = _store_statement(row)
    if event is None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)
        return
    try:
        event_insert_guarded(event, first=statement)
    except RequiredWriteFailed:
        raise
    except Exception:  # noqa: BLE001 - the usage event's failure policy
        event_not_written(request, response)


def replayed_response(stored: tuple[int, dict, bytes]) -> HttpResponse:
    """The stored ``(status_code, headers, body)`` as a response, with
    ``Idempotent-Replayed: true``."""
    status_code, headers, body = stored
    response = HttpResponse(body, status=status_code)
    if "Content-Type" not in headers:
        del response["Content-Type"]
    for name, value in headers.items():
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response
