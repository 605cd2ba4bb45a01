"""Retries through ``Idempotency-Key``: a finished write is answered again from storage,
never run or billed twice (IETF draft-ietf-httpapi-idempotency-key-header-07; Stripe's
idempotent requests, https://docs.stripe.com/api/idempotent_requests).

Scope: ``POST``, ``PUT``, ``PATCH`` and ``DELETE`` under ``settings.API_ROUTES`` of a
request with an organization (``TenantMiddleware``); keys are per organization. ``GET``,
``HEAD`` and ``OPTIONS`` ignore the header (they are safe to repeat, and each one served
is billed), and so does a request without organization (anonymous, the token endpoints).

The rules (``IdempotencyMiddleware``):

* The key: 1-255 printable ASCII characters (``0x20``-``0x7E``), sent bare (as Stripe's
  clients do) or as the draft's Structured Field String (``"..."``, RFC 8941 3.3.3,
  which is unquoted first). Anything else: ``400`` ``idempotency_key_invalid``.
* First request with a key: runs normally; if its status is below 500 its response
  (status, body, ``STORED_HEADERS``) is stored with the key and the request's
  ``request_fingerprint``, in the request's own transaction, until
  ``IDEMPOTENCY_KEY_TTL_HOURS`` have passed. A 5xx is not stored (its transaction is
  rolled back anyway): the retry runs again. A 4xx is stored and replayed.
* Same key, same fingerprint, first one finished: the stored response, with
  ``Idempotent-Replayed: true``. The view does not run, nothing is written or billed.
* Same key, other fingerprint: ``422`` ``idempotency_key_reused``; nothing runs.
* Same key while the first request still runs: ``409`` ``idempotency_key_in_progress``
  with ``Retry-After``; never two executions.

How "in progress" is seen by another connection: the request runs in ONE transaction
(opened by ``TenantMiddleware``), and its key row is only written (and visible) when it
commits. A concurrent ``INSERT`` of the same key would wait on the uncommitted index
entry until the first request ends (and a plain lookup would see nothing). So a keyed
request first takes ``pg_try_advisory_xact_lock`` on the key (PostgreSQL manual, 9.27.10
"Advisory Lock Functions"): held until its transaction ends, never waited for; a second
request that does not get it answers 409 at once. Then, in a second statement (so with a
fresh READ COMMITTED snapshot taken after the lock was granted), it reads the key's row:
a request that held the lock before has committed (its row is visible: PostgreSQL makes a
transaction visible before it releases its locks) or rolled back (no row). Both
statements go in one message: ONE round trip before the view. After it, the answer is
stored with one ``INSERT ... ON CONFLICT DO UPDATE`` (the update replaces an expired row
not purged yet) sent in the same message as the request's usage event, which the usage
middleware hands over instead of writing it (``insert_event_guarded(event, first=...)``):
so a keyed request costs one round trip more than the same request without a key (a
replay one more and no event write; an unbilled 403 two, having no event to ride on). A
request without the header costs nothing: two dictionary lookups. The isolation level
must be READ COMMITTED (Django's default on PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.db.transaction import TransactionManagementError
from django.http import HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone

from billing.middleware import EVENT_SINK_ATTR, event_not_written
from billing.models import IdempotencyKey
from billing.services import RequiredWriteFailed, _psycopg_cursor, insert_event_guarded
from tenancy.context import cross_tenant, transaction_aborted

logger = logging.getLogger("billing.idempotency")

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
    file, its field, file name, content type and the SHA-256 of its bytes. Not of the raw
    body, whose random boundary differs on every retry of most clients. A ``POST`` is
    parsed by Django (``request.POST``/``FILES``, which DRF then reuses); another method
    with Django's parser, its result left on the request for DRF the same way.

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
        "files": sorted(
            (name, upload.name, upload.content_type or "", _file_digest(upload))
            for name in files
            for upload in files.getlist(name)
        ),
    }
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def request_fingerprint(request) -> str:
    """SHA-256 (64 hex characters) identifying what ``request`` asks for: organization,
    user, method, path, raw query string, content type, and the SHA-256 of the body (for
    multipart, of each part: ``_multipart_digest``). A retry must match it exactly.

    Reads the body (at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes, Django's limit; files
    of a multipart upload are streamed), which the view then reads from Django's cache.

    Raises:
        MultiPartParserError: a malformed multipart body.
        django.core.exceptions.RequestDataTooBig: the body is over Django's limit.
    """
    if request.content_type == "multipart/form-data":
        body_digest = _multipart_digest(request)
    else:
        body_digest = hashlib.sha256(request.body).hexdigest()
    user = getattr(request, "user", None)
    parts = [
        str(request.organization.pk),
        str(getattr(user, "pk", "") or ""),
        request.method,
        request.path,
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
        a ``Claim``: ``busy`` if the lock is held by another transaction; else
        ``replay`` (same ``fingerprint``) or ``reused`` (another one) when a row exists;
        else ``new``.
    Raises:
        TransactionManagementError: called outside a transaction.
    """
    if not connection.in_atomic_block:
        raise TransactionManagementError("idempotency_key_claim runs in the request's transaction")
    params = [_lock_key(organization.pk, key), organization.pk, key, now or timezone.now()]
    with _psycopg_cursor(psycopg.ClientCursor) as cursor:
        cursor.execute(_CLAIM_SQL, params)
        (locked,) = cursor.fetchone()
        cursor.nextset()
        row = cursor.fetchone()
    if not locked:
        return Claim("busy")
    if row is None:
        return Claim("new")
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
    ``UsageMiddleware``. Written in the same round trip (``insert_event_guarded(event,
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
        path=request.get_full_path(),
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
        insert_event_guarded(event, first=statement)
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


def _error(detail: str, code: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


@dataclass(frozen=True)
class PurgeBatch:
    """One batch of ``idempotency_key_purge_expired``: its number (from 1), the keys it
    deleted, and the running total."""

    number: int
    deleted: int
    total: int


# A MATERIALIZED CTE, not ``WHERE (organization_id, key) IN (SELECT ... LIMIT)``: the
# planner may rescan an IN subquery, and with SKIP LOCKED each rescan picks other rows, so
# one "batch" could delete far more than its LIMIT.
_PURGE_SQL = (
    "WITH batch AS MATERIALIZED ("
    "SELECT organization_id, key FROM billing_idempotency_keys WHERE expires_at <= %s "
    "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "DELETE FROM billing_idempotency_keys k USING batch "
    "WHERE k.organization_id = batch.organization_id AND k.key = batch.key"
)


def idempotency_key_purge_expired(
    *,
    now: datetime | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    on_batch=None,
) -> int:
    """Delete every organization's keys that expired at or before ``now`` (default: now,
    UTC), ``batch_size`` rows per transaction (oldest expiry first, through the
    ``expires_at`` index), through the explicit cross-tenant path. Rows locked by a
    request that is replacing its expired key are skipped (``SKIP LOCKED``), never waited
    for. The service behind ``manage.py purge_idempotency_keys`` and the daily job.

    Args:
        dry_run: count the expired keys and delete nothing.
        on_batch: called with a ``PurgeBatch`` after each batch (progress output).
    Returns:
        the number of keys deleted (with ``dry_run``: that would be deleted).
    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = now or timezone.now()
    if dry_run:
        with cross_tenant(reason="count expired idempotency keys"):
            return IdempotencyKey.objects.filter(expires_at__lte=now).count()
    total, number = 0, 0
    while True:
        with cross_tenant(reason="purge expired idempotency keys"), connection.cursor() as cursor:
            cursor.execute(_PURGE_SQL, [now, batch_size])
            deleted = cursor.rowcount
        if not deleted:
            return total
        number += 1
        total += deleted
        if on_batch is not None:
            on_batch(PurgeBatch(number=number, deleted=deleted, total=total))
        if deleted < batch_size:
            return total


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
        organization = getattr(request, "organization", None)
        if raw is None or organization is None:
            return self.get_response(request)
        if not any(request.path.startswith(prefix) for prefix in settings.API_ROUTES):
            return self.get_response(request)
        try:
            key = parse_key(raw)
        except InvalidIdempotencyKey as exc:
            return _error(str(exc), "idempotency_key_invalid", 400)
        try:
            fingerprint = request_fingerprint(request)
        except MultiPartParserError as exc:
            return _error(f"Multipart form parse error - {exc}", "parse_error", 400)
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
