"""Writes of billing events. Idempotent: a duplicate key is not an error and creates no row.

Every write is one ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL manual, INSERT,
"ON CONFLICT Clause"). On the request path (``event_insert_guarded``, used by
``UsageMiddleware``) it is the INSERT the ORM compiles for one event, sent inside a
savepoint in a single round trip. For ``event_record`` / ``events_record`` it is
``INSERT ... SELECT FROM unnest(...) ... RETURNING id`` on Django's connection, so the
created rows come back in the same round trip (the ORM's ``ignore_conflicts`` cannot
return them; a confirming SELECT cost a second query and the per-row parameters a
third of a batch's time). An event whose key already exists (same organization, event
name and request id, the partial unique constraint
``billing_event_org_name_request_unique``; on the request path the request id is the
server's, unique per request, and ``doc.upload``/``doc.processed`` are keyed on the
document) is skipped by the database itself, without an exception, so the surrounding
transaction (the request's) is never aborted by a duplicate. Concurrent inserts of
the same key wait for each other on the unique index; exactly one row survives.
"""

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation

import psycopg
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connection, transaction
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.db.transaction import TransactionManagementError
from django.utils import timezone
from uuid6 import uuid7

from billing.models import BillingEvent, BillingEventStatus
from billing.pricing import unit_cost_cents as price_of
from core.db import psycopg_cursor, transaction_aborted

#: Events per INSERT statement of ``events_record``: it binds 13 arrays whatever the
#: size, so this only bounds one statement's memory. 1,000 events = 1 INSERT.
INSERT_BATCH_SIZE = 2000

_EVENT_TYPES = {"api": "api", "doc": "document"}
# Computed once: iterating the enum for every event cost a quarter of event_build.
_STATUSES = frozenset(BillingEventStatus.values)
_FIELDS = {
    "organization",
    "organization_id",
    "event_name",
    "event_type",
    "user",
    "user_id",
    "resource_id",
    "request_id",
    "quantity",
    "unit",
    "unit_cost_cents",
    "dimensions",
    "status",
    "created_at",
}


class InvalidBillingEvent(ValueError):
    """An event description is incomplete or malformed (message says which field)."""


def event_type_default(event_name: str) -> str:
    """``api.request -> api``, ``doc.upload -> document``; otherwise the part before the dot."""
    prefix = event_name.split(".", 1)[0]
    return _EVENT_TYPES.get(prefix, prefix)[:40]


def event_build(
    *,
    organization=None,
    organization_id=None,
    event_name: str,
    event_type: str | None = None,
    user=None,
    user_id=None,
    resource_id=None,
    request_id: str | None = None,
    quantity=Decimal("1"),
    unit: str = "call",
    unit_cost_cents: int | None = None,
    dimensions: Mapping | None = None,
    status: int = BillingEventStatus.PENDING,
    created_at=None,
) -> BillingEvent:
    """An unsaved, priced ``BillingEvent`` (no database access).

    ``organization`` (an ``Organization``) or ``organization_id`` is required;
    ``unit_cost_cents`` defaults to the price of ``event_name`` (``billing.pricing``);
    ``created_at`` defaults to now (UTC). ``request_id`` ``""`` is stored as NULL
    (an event without request id is never deduplicated).

    Raises:
        InvalidBillingEvent: no organization, empty/too long event_name, request_id over
            128 characters, negative or non-decimal quantity, unknown status.
    """
    org_id = getattr(organization, "pk", None) or organization_id
    if org_id is None:
        raise InvalidBillingEvent("organization is required")
    if not event_name or len(event_name) > 64:
        raise InvalidBillingEvent("event_name must be 1-64 characters")
    if request_id is not None:
        request_id = str(request_id) or None
        if request_id is not None and len(request_id) > 128:
            raise InvalidBillingEvent("request_id must be at most 128 characters")
    try:
        quantity = Decimal(str(quantity))
    except (InvalidOperation, ValueError) as exc:
        raise InvalidBillingEvent(f"quantity {quantity!r} is not a decimal") from exc
    if not quantity.is_finite() or quantity < 0:
        raise InvalidBillingEvent("quantity must be a finite, non-negative decimal")
    if status not in _STATUSES:
        raise InvalidBillingEvent(f"status must be one of {sorted(_STATUSES)}")
    if not unit or len(unit) > 16:
        raise InvalidBillingEvent("unit must be 1-16 characters")
    return BillingEvent(
        id=uuid7(),
        organization_id=org_id,
        user_id=getattr(user, "pk", None) or user_id,
        event_type=(event_type or event_type_default(event_name))[:40],
        event_name=event_name,
        resource_id=resource_id,
        request_id=request_id,
        quantity=quantity,
        unit=unit,
        unit_cost_cents=price_of(event_name) if unit_cost_cents is None else int(unit_cost_cents),
        dimensions=dict(dimensions or {}),
        status=status,
        created_at=created_at or timezone.now(),
    )


#: The savepoint of ``event_insert_guarded`` (one at a time: the request path writes
#: one event, last, in the request's transaction).
_GUARD_SAVEPOINT = "gl_billing_event"


class RequiredWriteFailed(DatabaseError):
    """The statement passed to ``event_insert_guarded`` as ``first`` (a write the request
    cannot do without) failed or was never sent: the request must fail with it (its
    transaction rolls back)."""


def event_insert_guarded(event: BillingEvent, *, first: tuple[str, list] | None = None) -> None:
    """Insert one built event (``ON CONFLICT DO NOTHING``) so that no failure of it can
    abort the caller's transaction, in ONE round trip: the INSERT that Django's ORM
    compiles for ``bulk_create(..., ignore_conflicts=True)`` (``InsertQuery``; values
    prepared by the model's fields), sent between ``SAVEPOINT`` and ``RELEASE
    SAVEPOINT`` as one multi-statement query (PostgreSQL manual, 55.2.2 "Simple Query":
    several statements in one message run in order and stop at the first error; SQL
    commands SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT).

    Used by ``UsageMiddleware`` on the hot path: ``transaction.atomic()`` around
    ``bulk_create`` costs three round trips (SAVEPOINT, INSERT, RELEASE), this one. If
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
    query = InsertQuery(BillingEvent, on_conflict=OnConflict.IGNORE)
    query.insert_values(BillingEvent._meta.concrete_fields, [event])
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    sql = f"SAVEPOINT {_GUARD_SAVEPOINT}; {sql}; RELEASE SAVEPOINT {_GUARD_SAVEPOINT}"
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


# (column, PostgreSQL array type) in the order of ``_row``.
_UNNEST_COLUMNS = (
    ("id", "uuid"),
    ("organization_id", "uuid"),
    ("user_id", "bigint"),
    ("event_type", "text"),
    ("event_name", "text"),
    ("resource_id", "uuid"),
    ("request_id", "text"),
    ("quantity", "numeric"),
    ("unit", "text"),
    ("unit_cost_cents", "integer"),
    ("dimensions", "text"),
    ("status", "smallint"),
    ("created_at", "timestamptz"),
)
_UNNEST_INSERT = (
    "INSERT INTO billing_events ({cols}) SELECT {select} FROM unnest({arrays}) AS t({cols}) "
    "ON CONFLICT DO NOTHING RETURNING id"
).format(
    cols=", ".join(name for name, _ in _UNNEST_COLUMNS),
    select=", ".join(
        "dimensions::jsonb" if name == "dimensions" else name for name, _ in _UNNEST_COLUMNS
    ),
    arrays=", ".join(f"%b::{kind}[]" for _, kind in _UNNEST_COLUMNS),
)


def _row(event: BillingEvent) -> tuple:
    return (
        event.id,
        event.organization_id,
        event.user_id,
        event.event_type,
        event.event_name,
        event.resource_id,
        event.request_id,
        event.quantity,
        event.unit,
        event.unit_cost_cents,
        json.dumps(event.dimensions, cls=DjangoJSONEncoder),
        event.status,
        event.created_at,
    )


def _insert_returning_created(events: list[BillingEvent]) -> list[BillingEvent]:
    """Insert ``events`` and return those really created, in one statement per
    ``INSERT_BATCH_SIZE`` events: ``INSERT ... SELECT FROM unnest(<one array per column>)
    ON CONFLICT DO NOTHING RETURNING id`` (PostgreSQL manual: INSERT, "ON CONFLICT
    Clause" and "RETURNING"; 9.19 Array Functions, ``unnest``).

    The one raw-SQL write of billing events, for batches: 13 array parameters instead
    of 13 per row, and the ids of the created rows come back with the INSERT (no
    confirming SELECT). The arrays are bound on the server (``psycopg.Cursor``), so they
    travel in psycopg's binary format instead of being quoted into the SQL text (a third
    of a batch's time at 1,000 events). It runs through Django's connection, in the caller's
    transaction, so row-level security and the tenant context apply as to the ORM.
    """
    created_ids: set = set()
    with psycopg_cursor(psycopg.Cursor) as cursor:
        for lo in range(0, len(events), INSERT_BATCH_SIZE):
            chunk = events[lo : lo + INSERT_BATCH_SIZE]
            columns = [list(column) for column in zip(*map(_row, chunk), strict=True)]
            cursor.execute(_UNNEST_INSERT, columns)
            created_ids.update(row[0] for row in cursor.fetchall())
    return [event for event in events if event.id in created_ids]


def event_record(*, organization, event_name: str, **fields) -> BillingEvent | None:
    """Record one event idempotently; return the created ``BillingEvent``, or ``None``
    when an event with the same (organization, event_name, request_id) already exists.

    ``fields``: see ``event_build`` (event_type, user, resource_id, request_id, quantity,
    unit, unit_cost_cents, dimensions, status, created_at). One query (INSERT ...
    RETURNING). Joins the caller's transaction (no savepoint).

    Raises:
        InvalidBillingEvent: see ``event_build``.
    """
    event = event_build(organization=organization, event_name=event_name, **fields)
    created = _insert_and_confirm([event])
    return created[0] if created else None


def events_record(events: Iterable[Mapping | BillingEvent]) -> list[BillingEvent]:
    """Record a batch idempotently; return the events created (in input order).

    Each item is a mapping of ``event_build`` keyword arguments (``organization`` or
    ``organization_id``, ``event_name``, ...), or an unsaved ``BillingEvent`` (saved
    as given: price it yourself). Duplicates, against the table or inside the batch,
    are skipped. Round trips: one ``INSERT ... RETURNING`` per ``INSERT_BATCH_SIZE``
    events (so 1,000 events = 1 query). Joins the caller's transaction (no
    savepoint); all or nothing.

    Raises:
        InvalidBillingEvent: an item is malformed (message gives its index); nothing
            is written.
    """
    built: list[BillingEvent] = []
    for index, item in enumerate(events):
        if isinstance(item, BillingEvent):
            if item.unit_cost_cents is None:
                item.unit_cost_cents = price_of(item.event_name)
            built.append(item)
            continue
        unknown = set(item) - _FIELDS
        if unknown:
            raise InvalidBillingEvent(f"event {index}: unknown fields {sorted(unknown)}")
        try:
            built.append(event_build(**item))
        except (InvalidBillingEvent, TypeError) as exc:
            raise InvalidBillingEvent(f"event {index}: {exc}") from exc
    return _insert_and_confirm(built)


@transaction.atomic(savepoint=False)
def _insert_and_confirm(events: list[BillingEvent]) -> list[BillingEvent]:
    # Validation happens before this atomic block, so bad input never marks the
    # caller's transaction for rollback.
    if not events:
        return []
    return _insert_returning_created(events)
