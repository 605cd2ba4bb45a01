"""Batch ingest of billing events near the speed of ``COPY``: the column list, the
validation of one event into a row, and the two set-based writes of rows.

A batch (``billing.services.events_record``) is validated in Python into plain row
tuples (``event_values``: no model instance per event; prices and defaults computed
once per batch by ``BatchDefaults``), then written in one transaction by
``rows_copy_insert``, three round trips whatever the size (four for a second batch in
the same transaction):

1. ``CREATE TEMP TABLE IF NOT EXISTS gl_billing_stage_<digest> (...) ON COMMIT DELETE
   ROWS; SELECT EXISTS (SELECT FROM pg_temp.gl_billing_stage_<digest>)`` (PostgreSQL
   manual, CREATE TABLE, "TEMPORARY" and "ON COMMIT"): private to the session, made once
   per session (a no-op afterwards: no catalog rows written and deleted per batch), and
   emptied at the end of every transaction, so nothing in it outlives a batch's
   transaction, behind PgBouncer's transaction pooling too. The ``EXISTS`` says whether an
   earlier batch of the same transaction left rows in it; only then (a caller writing
   several batches in one transaction) a ``DELETE`` empties it first, a fourth round trip;
2. ``COPY pg_temp.gl_billing_stage_<digest> FROM STDIN`` (PostgreSQL manual, COPY; psycopg
   docs, "Using COPY TO and COPY FROM"): the rows streamed, with their position in the
   batch;
3. ``INSERT INTO billing_events (...) SELECT ... FROM pg_temp.gl_billing_stage_<digest>
   ORDER BY n ON CONFLICT (<the unique key>) DO NOTHING RETURNING id`` (``ON_CONFLICT``).
   Emptying the table inside this statement instead (``WITH batch AS (DELETE ...
   RETURNING *)``) made a batch a fifth slower on the server (41 against 33 ms per 1,000
   rows, staging COPY to COMMIT, measured): the rows were deleted, materialised and
   re-read on every batch to serve the rare second one.

The INSERT is an ordinary one on ``billing_events``: its row-level security policies
(WITH CHECK) apply to every row as to the ORM (``COPY FROM`` into a table whose policies
apply to the role is refused by PostgreSQL, hence the staging table), and its unique
constraint, named as the conflict target (``ON_CONFLICT``), deduplicates: against the
table, and inside the batch the first occurrence in input order wins (``ORDER BY n``;
PostgreSQL manual, INSERT, "ON CONFLICT Clause": ``DO NOTHING`` skips a row that
conflicts with one inserted earlier by the same command). Small batches use
``rows_unnest_insert``, one ``INSERT ... SELECT FROM unnest(...)`` (one round trip,
cheaper below ``COPY_MIN_ROWS`` rows). Both return the ids of the rows really created.
"""

import hashlib
import re
import time
from decimal import Decimal, InvalidOperation

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DataError, connection
from django.db.models import Q
from django.utils import timezone
from uuid_utils.compat import uuid7

from billing.models import BillingEvent, BillingEventStatus
from billing.pricing import MAX_UNIT_COST_CENTS
from billing.pricing import unit_cost_cents as price_of
from core.db import psycopg_cursor

#: Fields of ``BillingEvent`` that no write of an event sets, and why; every other
#: concrete field is written, in model order (``EVENT_FIELDS``).
SET_LATER = {"usage_aggregate": "set by billing.reporting when the event is reported"}

#: The written fields, their columns and attribute names (``organization_id``, ...), all
#: derived once from ``BillingEvent._meta``: the COPY, the unnest INSERT, the API
#: serializer and the bench read them from here.
EVENT_FIELDS = tuple(f for f in BillingEvent._meta.concrete_fields if f.name not in SET_LATER)
EVENT_COLUMNS = tuple(f.column for f in EVENT_FIELDS)
EVENT_ATTNAMES = tuple(f.attname for f in EVENT_FIELDS)

#: The order of the tuple ``event_values`` returns. Checked against the model below, so a
#: new or reordered field fails at import rather than shifting values into wrong columns.
_VALUE_ORDER = (
    "id",
    "organization_id",
    "user_id",
    "event_type",
    "event_name",
    "resource_id",
    "request_id",
    "quantity",
    "unit",
    "unit_cost_cents",
    "dimensions",
    "status",
    "created_at",
)
if EVENT_ATTNAMES != _VALUE_ORDER:  # pragma: no cover - guards a model change
    raise ImproperlyConfigured(
        f"billing.ingest.event_values builds {_VALUE_ORDER}, BillingEvent writes "
        f"{EVENT_ATTNAMES}: update event_values (or SET_LATER) with the model"
    )
_DIMENSIONS = EVENT_ATTNAMES.index("dimensions")
# The SET_LATER fields come last in the model, so an instance can be made positionally
# (Django's fast path, the one ``Model.from_db`` uses); the rest take their defaults.
_POSITIONAL = tuple(f.attname for f in BillingEvent._meta.concrete_fields)[: len(EVENT_FIELDS)] == (
    EVENT_ATTNAMES
)

#: The keyword arguments an event description may carry (``event_values``).
EVENT_ARGUMENTS = frozenset(
    {"organization", "organization_id", "event_name", "event_type", "user", "user_id"}
    | {"resource_id", "request_id", "quantity", "unit", "unit_cost_cents", "dimensions"}
    | {"status", "created_at"}
)

#: Below this many rows, one ``INSERT ... FROM unnest(...)`` round trip beats the three
#: of the COPY path.
COPY_MIN_ROWS = 64

_EVENT_TYPES = {"api": "api", "doc": "document"}
_STATUSES = frozenset(BillingEventStatus.values)
_ENCODER = DjangoJSONEncoder()


class InvalidBillingEvent(ValueError):
    """An event description is incomplete or malformed, or the database refused one of
    its values (the message names the event's position in its batch and the field)."""


def event_type_default(event_name: str) -> str:
    """``api.request -> api``, ``doc.upload -> document``; otherwise the part before the dot."""
    prefix = event_name.split(".", 1)[0]
    return _EVENT_TYPES.get(prefix, prefix)[:40]


class BatchDefaults:
    """What every event of one batch shares, computed once: ``now`` (UTC, the default
    ``created_at``) and the price of each event name (``billing.pricing``, looked up and
    validated once per name per batch instead of once per event)."""

    __slots__ = ("now", "_prices", "_types")

    def __init__(self):
        self.now = timezone.now()
        self._prices: dict[str, int] = {}
        self._types: dict[str, str] = {}

    def price(self, event_name: str) -> int:
        """Cents per unit of ``event_name`` (int)."""
        cents = self._prices.get(event_name)
        if cents is None:
            cents = self._prices[event_name] = price_of(event_name)
        return cents

    def event_type(self, event_name: str) -> str:
        """``event_type_default(event_name)``, once per name."""
        kind = self._types.get(event_name)
        if kind is None:
            kind = self._types[event_name] = event_type_default(event_name)
        return kind


def event_values(
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
    dimensions=None,
    status: int = BillingEventStatus.PENDING,
    created_at=None,
    defaults: BatchDefaults | None = None,
) -> tuple:
    """One validated event as a row tuple in ``EVENT_ATTNAMES`` order (``dimensions`` a
    new ``dict``), with a new UUIDv7 id; no database access.

    ``organization`` (an ``Organization``) or ``organization_id`` is required;
    ``unit_cost_cents`` defaults to the price of ``event_name`` (``billing.pricing``);
    ``created_at`` defaults to now (UTC); ``event_type`` to ``event_type_default``.
    ``request_id`` ``""`` is stored as NULL (an event without request id is never
    deduplicated). ``defaults``: the batch's shared ``BatchDefaults`` (one is made for a
    single event).

    Raises:
        InvalidBillingEvent: no organization, empty/too long event_name, request_id over
            128 characters, negative or non-decimal quantity, unknown status, unit not
            1-16 characters, price not an integer between 0 and 2,147,483,647 cents.
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
    if type(quantity) is not Decimal:
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
    if defaults is None:
        defaults = BatchDefaults()
    if unit_cost_cents is None:
        unit_cost_cents = defaults.price(event_name)
    else:
        try:
            unit_cost_cents = int(unit_cost_cents)
        except (TypeError, ValueError) as exc:
            problem = f"unit_cost_cents {unit_cost_cents!r} is not an integer"
            raise InvalidBillingEvent(problem) from exc
        if not 0 <= unit_cost_cents <= MAX_UNIT_COST_CENTS:
            raise InvalidBillingEvent(
                f"unit_cost_cents must be between 0 and {MAX_UNIT_COST_CENTS} cents"
            )
    return (
        uuid7(),
        org_id,
        getattr(user, "pk", None) or user_id,
        (event_type or defaults.event_type(event_name))[:40],
        event_name,
        resource_id,
        request_id,
        quantity,
        unit,
        unit_cost_cents,
        dict(dimensions or {}),
        status,
        created_at or defaults.now,
    )


def instance_values(event: BillingEvent) -> tuple:
    """An unsaved ``BillingEvent``'s row tuple, as given (``EVENT_ATTNAMES`` order)."""
    return tuple(getattr(event, attname) for attname in EVENT_ATTNAMES)


def event_instance(values: tuple) -> BillingEvent:
    """An unsaved ``BillingEvent`` holding ``values`` (a row tuple of ``event_values``)."""
    if _POSITIONAL:
        return BillingEvent(*values)
    return BillingEvent(**dict(zip(EVENT_ATTNAMES, values, strict=True)))  # pragma: no cover


def dimensions_json(dimensions) -> str:
    """``dimensions`` as JSON text (``DjangoJSONEncoder``: datetimes, decimals, UUIDs), with
    every NUL character in a key or a string value replaced by U+FFFD.

    ``jsonb`` refuses ``\\u0000`` (PostgreSQL manual, 8.14 "JSON Types"), and the values
    come from the client (a request path such as ``/api/v1/cases/%00/``): left in, the
    event could not be written, so a request would go unbilled. Only a text that holds
    the escape is encoded a second time."""
    text = _ENCODER.encode(dimensions)
    if "\\u0000" in text:
        text = _ENCODER.encode(_without_nul(dimensions))
    return text


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


# --- the writes -----------------------------------------------------------------------


def _pg_type(field) -> str:
    """The PostgreSQL type of ``field``'s column (a foreign key: its target's)."""
    return field.db_type(connection)


def _array_type(field) -> str:
    """The element type the unnest INSERT binds ``field``'s array as (JSON goes as text,
    cast to ``jsonb`` in its SELECT list)."""
    db_type = _pg_type(field)
    if db_type.startswith("varchar"):
        return "text"
    if db_type.startswith("numeric"):
        return "numeric"
    return {"jsonb": "text", "timestamp with time zone": "timestamptz"}.get(db_type, db_type)


_TABLE = BillingEvent._meta.db_table
_COLS = ", ".join(EVENT_COLUMNS)

#: The unique key that deduplicates events: (organization, event name, request id), where
#: a request id is set (``billing_event_org_name_request_unique``).
_KEY = next(
    c for c in BillingEvent._meta.constraints if c.name == "billing_event_org_name_request_unique"
)
if _KEY.condition != Q(request_id__isnull=False):  # pragma: no cover - guards a model change
    raise ImproperlyConfigured(
        f"{_KEY.name}'s predicate changed: update the WHERE of billing.ingest.ON_CONFLICT"
    )
#: The conflict clause of every event INSERT: that key, named as its conflict target (the
#: partial index inferred by its columns and predicate). PostgreSQL manual, INSERT, "ON
#: CONFLICT Clause": without a conflict target every unique index is an arbiter, checked
#: before each row is inserted, the primary key included. Naming the key checks one index
#: per row instead of two (a batch of 1,000 into 10M rows: 12 % more events/s, measured),
#: and a row whose id already exists (an event saved twice as the same instance) is an
#: error (``IntegrityError``) rather than a billing event silently dropped.
ON_CONFLICT = (
    "ON CONFLICT ("
    + ", ".join(BillingEvent._meta.get_field(name).column for name in _KEY.fields)
    + ") WHERE request_id IS NOT NULL DO NOTHING"
)
#: (column, array element type) of the unnest INSERT, in ``EVENT_COLUMNS`` order.
UNNEST_COLUMNS = tuple((f.column, _array_type(f)) for f in EVENT_FIELDS)
UNNEST_INSERT = (
    f"INSERT INTO {_TABLE} ({_COLS}) SELECT "
    + ", ".join(f"{c}::jsonb" if c == "dimensions" else c for c, _ in UNNEST_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"%b::{t}[]" for _, t in UNNEST_COLUMNS)
    + f") AS t({_COLS}) {ON_CONFLICT} RETURNING id"
)

#: One event's ``INSERT ... VALUES (...) ON CONFLICT (...) DO NOTHING`` (``dimensions`` bound as
#: JSON text and cast to ``jsonb``), built once: the request path's write
#: (``billing.services.event_insert_guarded``), with the parameters of ``row_params``.
ROW_INSERT = (
    f"INSERT INTO {_TABLE} ({_COLS}) VALUES ("
    + ", ".join("%s::jsonb" if c == "dimensions" else "%s" for c in EVENT_COLUMNS)
    + f") {ON_CONFLICT}"
)


def row_params(values: tuple) -> list:
    """The parameters of ``ROW_INSERT`` for one row tuple (``EVENT_ATTNAMES`` order):
    the values as they are, ``dimensions`` as JSON text (``dimensions_json``)."""
    params = list(values)
    params[_DIMENSIONS] = dimensions_json(params[_DIMENSIONS])
    return params


_STAGE_COLUMNS = "n integer NOT NULL, " + ", ".join(
    f"{f.column} {_pg_type(f)}" for f in EVENT_FIELDS
)
#: The staging table's name carries a digest of its columns: a session that made it under
#: another version of the model (a pooled server connection outliving a deploy) makes a
#: new one rather than copying into the old shape.
STAGE_NAME = f"gl_billing_stage_{hashlib.sha256(_STAGE_COLUMNS.encode()).hexdigest()[:8]}"
STAGE = f"pg_temp.{STAGE_NAME}"
STAGE_CREATE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_NAME} ({_STAGE_COLUMNS}) ON COMMIT DELETE ROWS; "
    f"SELECT EXISTS (SELECT FROM {STAGE})"
)
#: Run only when ``STAGE_CREATE`` found rows: an earlier batch of the same transaction's.
STAGE_EMPTY = f"DELETE FROM {STAGE}"
STAGE_COPY = f"COPY {STAGE} (n, {_COLS}) FROM STDIN"
#: The INSERT from the staging table when only the number of rows created is wanted.
STAGE_INSERT_COUNT = (
    f"INSERT INTO {_TABLE} ({_COLS}) SELECT {_COLS} FROM {STAGE} ORDER BY n {ON_CONFLICT}"
)
#: The same with ``RETURNING id``, when the created rows' ids are wanted.
STAGE_INSERT = f"{STAGE_INSERT_COUNT} RETURNING id"

#: ``COPY``'s error context: "COPY gl_billing_stage, line 3, column quantity: ..."
_COPY_LINE = re.compile(r"\bline (\d+)(?:, column (\w+))?")


def rows_unnest_insert(rows: list[tuple], *, returning: bool = True) -> set | int:
    """Insert row tuples (``EVENT_ATTNAMES`` order, ``dimensions`` a dict) with one
    ``INSERT ... SELECT FROM unnest(<one array per column>) ON CONFLICT (<the unique key>) DO
    NOTHING RETURNING id`` (PostgreSQL manual: INSERT, "ON CONFLICT Clause"; 9.19 Array
    Functions, ``unnest``); return the ids of the rows created.

    The arrays are bound on the server (``psycopg.Cursor``) in psycopg's binary format.
    Runs on Django's connection in the caller's transaction (row-level security and the
    tenant context apply as to the ORM). ``returning=False``: return only the number
    created (``int``)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    columns[_DIMENSIONS] = [dimensions_json(d) for d in columns[_DIMENSIONS]]
    with psycopg_cursor(psycopg.Cursor) as cursor:
        cursor.execute(UNNEST_INSERT, columns)
        created = {row[0] for row in cursor.fetchall()}
    return created if returning else len(created)


def rows_copy_insert(rows: list[tuple], *, returning: bool = True) -> set | int:
    """Insert row tuples (as ``rows_unnest_insert``) through the COPY staging table (the
    module's docstring gives the three statements); return the ids of the rows created
    (a ``set`` of UUIDs), or with ``returning=False`` only their number (``int``: the
    INSERT's row count, no ``RETURNING``).

    Must run inside a transaction (``events_record`` opens one): the staging table is
    emptied at its end (``ON COMMIT DELETE ROWS``), and before a second batch of the same
    transaction (``STAGE_EMPTY``). The
    COPY is logged like the other statements when queries are logged
    (``connection.queries_log``, as ``CaptureQueriesContext`` reads it).

    Raises:
        InvalidBillingEvent: PostgreSQL refused a value while copying (e.g. a
            ``resource_id`` that is not a UUID): the message names the event by its
            position in ``rows`` and the column. The transaction is then aborted: the
            caller's ``atomic`` block rolls it back, nothing of the batch is written.
        django.db.DatabaseError: the INSERT failed (e.g. a row-level security policy).
    """
    encode = dimensions_json
    with psycopg_cursor(psycopg.ClientCursor) as cursor:
        cursor.execute(STAGE_CREATE)
        cursor.nextset()  # the SELECT's result (the CREATE's comes first)
        if cursor.fetchone()[0]:
            cursor.execute(STAGE_EMPTY)
        started = time.monotonic()
        try:
            with connection.wrap_database_errors, cursor.cursor.copy(STAGE_COPY) as copy:
                write, cut = copy.write_row, _DIMENSIONS
                for n, row in enumerate(rows):
                    write((n, *row[:cut], encode(row[cut]), *row[cut + 1 :]))
        except DataError as exc:
            raise _named(exc) from exc
        finally:
            if connection.queries_logged:
                connection.queries_log.append(
                    {
                        "sql": f"{STAGE_COPY} -- {len(rows)} rows",
                        "time": f"{time.monotonic() - started:.3f}",
                    }
                )
        if not returning:
            cursor.execute(STAGE_INSERT_COUNT)
            return cursor.rowcount
        cursor.execute(STAGE_INSERT)
        return {row[0] for row in cursor.fetchall()}


def _named(exc: DataError) -> Exception:
    """A COPY data error as ``InvalidBillingEvent`` naming the event (its line in the COPY
    is its position + 1), or ``exc`` itself when PostgreSQL's context gives no line."""
    diag = getattr(exc.__cause__, "diag", None)
    match = _COPY_LINE.search(getattr(diag, "context", None) or "")
    if match is None:
        return exc
    column = f" ({match.group(2)})" if match.group(2) else ""
    primary = getattr(diag, "message_primary", None) or str(exc)
    return InvalidBillingEvent(f"event {int(match.group(1)) - 1}{column}: {primary}")
