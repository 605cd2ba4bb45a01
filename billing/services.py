"""Writes of billing events. Idempotent: a duplicate key is not an error and creates no row.

Every write is one ``INSERT ... ON CONFLICT (<the unique key>) DO NOTHING``
(``billing.ingest.ON_CONFLICT``; PostgreSQL manual, INSERT, "ON CONFLICT Clause"): only
the key below deduplicates; an id that already exists is an error, never a skip. On the
request path (``event_insert_guarded``, used by ``UsageMiddleware``) it is one event's
``INSERT ... VALUES`` (``billing.ingest.ROW_INSERT``), sent inside a savepoint in a single
round trip. ``event_record`` / ``events_record`` validate each event into a plain row
(``billing.ingest.event_values``; prices and defaults once per batch) and write them
set-based with ``RETURNING id``: a small batch in one ``INSERT ... SELECT FROM
unnest(...)``, a larger one streamed with ``COPY`` into a temporary staging table and
inserted from it (``billing.ingest``), so the created rows come back with the write and
no model instance is made for an event the caller does not get back. An event whose key
already exists (same organization, event name and request id, the partial unique
constraint ``billing_event_org_name_request_unique``; on the request path the request id
is the server's, unique per request, and ``doc.upload``/``doc.processed`` are keyed on
the document) is skipped by the database itself, without an exception, so the
surrounding transaction (the request's) is never aborted by a duplicate. Concurrent
inserts of the same key wait for each other on the unique index; exactly one row
survives.
"""

from collections.abc import Iterable, Mapping

import psycopg
from django.db import DatabaseError, connection, transaction
from django.db.transaction import TransactionManagementError

from billing import ingest
from billing.ingest import (  # noqa: F401 - re-exported: the services' public names
    InvalidBillingEvent,
    event_type_default,
)
from billing.models import BillingEvent
from core.db import psycopg_cursor, transaction_aborted


def event_build(**fields) -> BillingEvent:
    """An unsaved, priced ``BillingEvent`` (no database access).

    ``fields``: the keyword arguments of ``billing.ingest.event_values`` (``organization``
    or ``organization_id``, ``event_name``, and optionally ``event_type``, ``user`` /
    ``user_id``, ``resource_id``, ``request_id``, ``quantity`` (default 1), ``unit``
    (default ``call``), ``unit_cost_cents`` (default: the price of ``event_name``,
    ``billing.pricing``), ``dimensions``, ``status`` (default pending), ``created_at``
    (default now, UTC)). ``request_id`` ``""`` is stored as NULL (an event without
    request id is never deduplicated).

    Raises:
        InvalidBillingEvent: no organization, empty/too long event_name, request_id over
            128 characters, negative or non-decimal quantity, unknown status (see
            ``event_values``).
        TypeError: an unknown keyword, or no ``event_name``.
    """
    return ingest.event_instance(ingest.event_values(**fields))


#: The savepoint of ``event_insert_guarded`` (one at a time: the request path writes
#: one event, last, in the request's transaction).
_GUARD_SAVEPOINT = "gl_billing_event"


class RequiredWriteFailed(DatabaseError):
    """The statement passed to ``event_insert_guarded`` as ``first`` (a write the request
    cannot do without) failed or was never sent: the request must fail with it (its
    transaction rolls back)."""


def event_insert_guarded(event: BillingEvent, *, first: tuple[str, list] | None = None) -> None:
    """Insert one built event (``ON CONFLICT DO NOTHING``) so that no failure of it can
    abort the caller's transaction, in ONE round trip: ``billing.ingest.ROW_INSERT`` (the
    written columns, built once at import rather than compiled by the ORM per request),
    sent between ``SAVEPOINT`` and ``RELEASE SAVEPOINT`` as one multi-statement query
    (PostgreSQL manual, 55.2.2 "Simple Query": several statements in one message run in
    order and stop at the first error; SQL commands SAVEPOINT, RELEASE SAVEPOINT,
    ROLLBACK TO SAVEPOINT).

    Used by ``UsageMiddleware`` on the hot path: ``transaction.atomic()`` around
    ``bulk_create`` costs three round trips (SAVEPOINT, INSERT, RELEASE), this one, and
    no ORM query is compiled per request. If
    the INSERT fails, a second round trip (``ROLLBACK TO SAVEPOINT; RELEASE``) restores
    the transaction, with every earlier write of the request intact, and the error is
    raised. The statements go through a client-side-binding psycopg cursor
    (``core.db.psycopg_cursor``: multi-statement queries need the simple query protocol,
    whatever ``server_side_binding`` says).

    A transaction that an earlier statement already aborted is refused before anything is
    sent (nothing could be written in it, and the request will fail at its end). If the
    savepoint cannot be rolled back to, the transaction is marked for rollback
    (``transaction.set_rollback(True)``) rather than committed half-applied.

    ``first``: one more statement ``(sql, params)`` of the request's own writes (the stored
    answer of its ``Idempotency-Key``, ``billing.idempotency``), sent in the same message
    before the savepoint (``<first>; SAVEPOINT ...; INSERT ...; RELEASE ...``), so the two
    writes cost one round trip. It is not guarded: if it fails (or nothing could be sent),
    nothing after it runs and ``RequiredWriteFailed`` is raised; if only the
    event's INSERT fails, the savepoint is rolled back, ``first`` stays applied, and the
    event's error is raised as without ``first``.

    Note: foreign keys are ``DEFERRABLE INITIALLY DEFERRED`` (Django's default), so a
    violation of one (the organization or user deleted while the request ran) is
    reported at COMMIT, outside the savepoint.

    Raises:
        RequiredWriteFailed: ``first`` failed or was not sent (the transaction must roll
            back).
        django.db.DatabaseError: the INSERT failed (the savepoint was rolled back), or the
            transaction was already aborted (nothing was sent).
        django.db.TransactionManagementError: called outside a transaction.
    """
    if not connection.in_atomic_block:
        raise TransactionManagementError(
            "event_insert_guarded runs inside a transaction (the request's): its tenant "
            "context and the savepoint need one"
        )
    params = ingest.row_params(ingest.instance_values(event))
    sql = f"SAVEPOINT {_GUARD_SAVEPOINT}; {ingest.ROW_INSERT}; RELEASE SAVEPOINT {_GUARD_SAVEPOINT}"
    if first is not None:
        sql, params = f"{first[0]}; {sql}", [*first[1], *params]
    with psycopg_cursor(psycopg.ClientCursor) as cursor:
        if transaction_aborted():
            raise (RequiredWriteFailed if first is not None else DatabaseError)(
                "the transaction was already aborted by an earlier statement; "
                "the billing event was not sent"
            )
        try:
            cursor.execute(sql, params)
        except DatabaseError as exc:
            # Aborted now: a statement of ours failed on the server. Not aborted: the error
            # came before anything ran (e.g. adapting a parameter); nothing to undo.
            restored = False
            if transaction_aborted():
                try:
                    cursor.execute(
                        f"ROLLBACK TO SAVEPOINT {_GUARD_SAVEPOINT}; "
                        f"RELEASE SAVEPOINT {_GUARD_SAVEPOINT}"
                    )
                    restored = True  # only the event failed; ``first`` ran
                except DatabaseError:
                    # The savepoint never existed (``first`` failed, or the whole query was
                    # refused before running): the transaction cannot be restored.
                    transaction.set_rollback(True)
            if first is not None and not restored:
                raise RequiredWriteFailed(f"the request's own write failed: {exc}") from exc
            raise


def event_record(*, organization, event_name: str, **fields) -> BillingEvent | None:
    """Record one event idempotently; return the created ``BillingEvent``, or ``None``
    when an event with the same (organization, event_name, request_id) already exists.

    ``fields``: see ``event_build`` (event_type, user, resource_id, request_id, quantity,
    unit, unit_cost_cents, dimensions, status, created_at). One query (INSERT ...
    RETURNING). Joins the caller's transaction (no savepoint).

    Raises:
        InvalidBillingEvent: see ``event_build``.
    """
    values = ingest.event_values(organization=organization, event_name=event_name, **fields)
    created = _write([values], copy=False, returning=True)
    return ingest.event_instance(values) if created else None


def events_record(
    events: Iterable[Mapping | BillingEvent], *, copy: bool | None = None
) -> list[BillingEvent]:
    """Record a batch idempotently; return the events created (in input order).

    Each item is a mapping of ``event_build`` keyword arguments (``organization`` or
    ``organization_id``, ``event_name``, ...), or an unsaved ``BillingEvent`` (saved
    as given, and returned itself if created: price it yourself, or its
    ``unit_cost_cents`` is set to the price of its name). Duplicates, against the table or
    inside the batch (the first occurrence wins), are skipped. ``created_at`` defaults to
    one "now" for the whole batch and each event name is priced once.

    Writes: ``ingest.COPY_MIN_ROWS`` events or more go through ``COPY`` into a temporary
    staging table and one ``INSERT ... SELECT ... RETURNING id`` from it (three round
    trips whatever the size, four for a second batch in the same transaction, see
    ``billing.ingest``); fewer, one ``INSERT ... SELECT FROM
    unnest(...)``. ``copy`` forces one path (``True``/``False``; the tests compare them).
    One transaction for the batch: joins the caller's, or opens one (no savepoint); all
    or nothing.

    Raises:
        InvalidBillingEvent: an item is malformed, or PostgreSQL refused one of its values
            (the message gives its index in the batch). Nothing of the batch is written; a
            malformed item is found before anything is sent, so the caller's transaction
            goes on, while a value refused by PostgreSQL has aborted it (roll it back).
        django.db.IntegrityError: an item's id is already in the table or twice in the
            batch (an instance saved twice; only the unique key above deduplicates). The
            transaction is aborted, nothing of the batch is written.
    """
    rows, given = _rows(events)
    created = _write(rows, copy=copy, returning=True)
    if not created:
        return []
    return [
        given.get(index) or ingest.event_instance(row)
        for index, row in enumerate(rows)
        if row[0] in created
    ]


def events_ingest(events: Iterable[Mapping | BillingEvent], *, copy: bool | None = None) -> int:
    """Record a batch idempotently like ``events_record``, and return only the number of
    events created (``int``): for bulk callers, which need no model instance back (none
    is made; the INSERT has no ``RETURNING``). Same rows, same rules, same errors as
    ``events_record``.

    Raises:
        InvalidBillingEvent: see ``events_record``.
    """
    rows, _ = _rows(events)
    return _write(rows, copy=copy, returning=False)


def _rows(events: Iterable[Mapping | BillingEvent]) -> tuple[list[tuple], dict]:
    """The batch as validated row tuples, and ``{index: item}`` for the items that were
    ``BillingEvent`` instances (prices and defaults once per batch: ``BatchDefaults``)."""
    defaults = ingest.BatchDefaults()
    rows: list[tuple] = []
    given: dict[int, BillingEvent] = {}
    values = ingest.event_values
    for index, item in enumerate(events):
        if isinstance(item, BillingEvent):
            if item.unit_cost_cents is None:
                item.unit_cost_cents = defaults.price(item.event_name)
            given[index] = item
            rows.append(ingest.instance_values(item))
            continue
        unknown = item.keys() - ingest.EVENT_ARGUMENTS
        if unknown:
            raise InvalidBillingEvent(f"event {index}: unknown fields {sorted(unknown)}")
        try:
            rows.append(values(**item, defaults=defaults))
        except (InvalidBillingEvent, TypeError) as exc:
            raise InvalidBillingEvent(f"event {index}: {exc}") from exc
    return rows, given


@transaction.atomic(savepoint=False)
def _write(rows: list[tuple], *, copy: bool | None, returning: bool) -> set | int:
    # Validation happens before this atomic block, so bad input never marks the
    # caller's transaction for rollback.
    if not rows:
        return set() if returning else 0
    if copy is None:
        copy = len(rows) >= ingest.COPY_MIN_ROWS
    write = ingest.rows_copy_insert if copy else ingest.rows_unnest_insert
    return write(rows, returning=returning)
