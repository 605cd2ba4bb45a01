import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import ingest, pricing, services
from billing.models import BillingEvent
from billing.services import InvalidBillingEvent, event_record, events_record
from tenancy.context import cross_tenant

pytestmark = pytest.mark.django_db


def test_record_event_creates_priced_row(org, owner, settings):
    settings.USAGE_RATE_CENTS = 3
    event = event_record(
        organization=org,
        event_name="api.request",
        user=owner,
        request_id="r-1",
        dimensions={"endpoint": "/api/v1/cases/"},
    )
    assert event is not None
    row = BillingEvent.objects.get()
    assert row.id == event.id
    assert row.organization_id == org.pk
    assert row.user_id == owner.pk
    assert row.event_type == "api"
    assert row.unit == "call"
    assert row.quantity == Decimal("1")
    assert row.unit_cost_cents == 3
    assert row.status == 0
    assert row.dimensions == {"endpoint": "/api/v1/cases/"}


def test_record_event_duplicate_is_none_and_no_row(org):
    first = event_record(organization=org, event_name="api.request", request_id="dup")
    second = event_record(organization=org, event_name="api.request", request_id="dup")
    assert first is not None
    assert second is None
    assert BillingEvent.objects.count() == 1


def test_same_request_id_other_org_or_other_name_is_not_a_duplicate(org, outsider_org):
    assert event_record(organization=org, event_name="api.request", request_id="x")
    assert event_record(organization=outsider_org, event_name="api.request", request_id="x")
    assert event_record(organization=org, event_name="doc.upload", request_id="x", unit="document")
    assert BillingEvent.objects.count() == 3


def test_events_without_request_id_are_never_deduplicated(org):
    event_record(organization=org, event_name="doc.processed", unit="page", quantity=2)
    event_record(organization=org, event_name="doc.processed", unit="page", quantity=2)
    assert BillingEvent.objects.count() == 2


def test_duplicate_does_not_abort_the_transaction(org):
    """After a duplicate inside the same transaction, later queries still work."""
    event_record(organization=org, event_name="api.request", request_id="dup")
    event_record(organization=org, event_name="api.request", request_id="dup")
    assert event_record(organization=org, event_name="api.request", request_id="next")
    assert BillingEvent.objects.count() == 2


def test_price_book_wins_over_default_rate(org, settings):
    settings.USAGE_RATE_CENTS = 1
    settings.BILLING_PRICE_BOOK = {"doc.processed": 7}
    processed = event_record(organization=org, event_name="doc.processed", unit="page", quantity=3)
    call = event_record(organization=org, event_name="api.request")
    explicit = event_record(organization=org, event_name="api.request", unit_cost_cents=0)
    assert (processed.unit_cost_cents, call.unit_cost_cents, explicit.unit_cost_cents) == (7, 1, 0)


def test_bad_price_book_is_a_configuration_error(settings):
    settings.BILLING_PRICE_BOOK = {"api.request": "cheap"}
    with pytest.raises(ImproperlyConfigured):
        pricing.unit_cost_cents("api.request")


@pytest.mark.parametrize(
    ("exact", "cents"),
    [
        (Decimal("2.5"), 3),
        (Decimal("2.4999"), 2),
        (Decimal("3.5"), 4),
        (Decimal("0.5"), 1),
        (Decimal("0"), 0),
        (None, 0),
    ],
)
def test_line_cost_rounds_half_up_once(exact, cents):
    assert pricing.line_cost_cents(exact) == cents


def test_record_events_batch_of_thousand_writes_every_row(org, outsider_org):
    events = [
        {
            "organization": org if i % 2 else outsider_org,
            "event_name": "api.request",
            "request_id": f"b-{i}",
            "dimensions": {"i": i},
        }
        for i in range(1000)
    ]
    created = events_record(events)
    assert len(created) == 1000
    assert BillingEvent.objects.filter(organization=org).count() == 500
    stored = BillingEvent.objects.get(organization=org, request_id="b-7")
    assert stored.dimensions == {"i": 7} and stored.unit_cost_cents is not None
    assert BillingEvent.objects.filter(organization=outsider_org).count() == 500


def test_small_batch_is_one_query(org, outsider_org):
    """Below ``COPY_MIN_ROWS``: one INSERT ... RETURNING, the created ids come back with it."""
    events = [
        {"organization": (org, outsider_org)[i % 2], "event_name": "api.request"}
        | {"request_id": f"s-{i}"}
        for i in range(ingest.COPY_MIN_ROWS - 1)
    ]
    with CaptureQueriesContext(connection) as ctx:
        assert len(events_record(events)) == len(events)
    assert len(ctx.captured_queries) == 1, [q["sql"][:80] for q in ctx.captured_queries]


def test_record_events_returns_only_created_and_skips_in_batch_duplicates(org):
    event_record(organization=org, event_name="api.request", request_id="old")
    created = events_record(
        [
            {"organization": org, "event_name": "api.request", "request_id": "old"},
            {"organization_id": org.pk, "event_name": "api.request", "request_id": "new"},
            {"organization": org, "event_name": "api.request", "request_id": "new"},
            {"organization": org, "event_name": "doc.upload", "unit": "document"},
        ]
    )
    assert [(e.event_name, e.request_id) for e in created] == [
        ("api.request", "new"),
        ("doc.upload", None),
    ]
    assert BillingEvent.objects.count() == 3


def test_record_events_bad_item_writes_nothing(org):
    with pytest.raises(InvalidBillingEvent, match="event 1"):
        events_record(
            [
                {"organization": org, "event_name": "api.request"},
                {"organization": org, "event_name": "api.request", "quantity": "-1"},
            ]
        )
    with pytest.raises(InvalidBillingEvent, match="unknown fields"):
        events_record([{"organization": org, "event_name": "x", "colour": "red"}])
    with pytest.raises(InvalidBillingEvent, match="organization"):
        event_record(organization=None, event_name="api.request")
    assert BillingEvent.objects.count() == 0


def test_record_events_empty_batch_no_query():
    with CaptureQueriesContext(connection) as ctx:
        assert events_record([]) == []
    assert ctx.captured_queries == []


def test_raw_insert_binds_each_column_as_its_type():
    """The unnest INSERT binds each column's array as the column's type (JSON as text, cast
    ``::jsonb`` in its SELECT list); the row tuple of an event holds its values in the
    columns' order (the list itself: ``test_ingest``, derived from the model)."""
    columns = {field.column: field for field in BillingEvent._meta.concrete_fields}
    expected = {"varchar": "text", "numeric": "numeric", "jsonb": "text"}
    for name, kind in ingest.UNNEST_COLUMNS:
        db_type = columns[name].db_type(connection)
        assert kind == expected.get(db_type.split("(")[0], db_type).replace(
            "timestamp with time zone", "timestamptz"
        ), name
    assert "dimensions::jsonb" in ingest.UNNEST_INSERT

    event = services.event_build(
        organization_id=uuid.uuid4(),
        user_id=7,
        event_name="doc.processed",
        resource_id=uuid.uuid4(),
        request_id="req-1",
        quantity=Decimal("2.5"),
        unit="page",
        unit_cost_cents=3,
        dimensions={"pages": 2},
        status=1,
    )
    row = ingest.instance_values(event)
    for name, value in zip(ingest.EVENT_COLUMNS, row, strict=True):
        assert value == getattr(event, columns[name].attname), name
    assert json.loads(ingest.dimensions_json(event.dimensions)) == {"pages": 2}


def test_raw_insert_round_trips_every_column(org, owner):
    """What events_record writes reads back through the ORM as built (every column)."""
    created_at = datetime(2025, 11, 5, 12, 30, tzinfo=UTC)
    [event] = events_record(
        [
            {
                "organization": org,
                "user": owner,
                "event_name": "doc.processed",
                "event_type": "document",
                "resource_id": uuid.uuid4(),
                "request_id": "round-trip",
                "quantity": Decimal("2.5000"),
                "unit": "page",
                "unit_cost_cents": 3,
                "dimensions": {"pages": 2, "content_type": "application/pdf"},
                "status": 1,
                "created_at": created_at,
            }
        ]
    )
    stored = BillingEvent.objects.get(pk=event.pk)
    for field in BillingEvent._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(event, field.attname), field.name


# --- event_insert_guarded: the request path's one-round-trip write -------------------------


def _built(org, request_id="g-1"):
    return services.event_build(organization=org, event_name="api.request", request_id=request_id)


def test_guarded_insert_is_one_query_and_idempotent(org):
    with CaptureQueriesContext(connection) as ctx:
        services.event_insert_guarded(_built(org))
        services.event_insert_guarded(_built(org))  # the same key: skipped, no error
    assert len(ctx.captured_queries) == 2
    assert BillingEvent.objects.filter(request_id="g-1").count() == 1


def test_guarded_insert_refuses_an_already_aborted_transaction_without_sending(org):
    """A statement that failed earlier without a savepoint left the transaction aborted:
    nothing is sent (it would fail and its cleanup too), the error says why."""
    from django.db import DatabaseError, transaction

    with transaction.atomic():
        with pytest.raises(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
        with CaptureQueriesContext(connection) as ctx:
            with pytest.raises(DatabaseError, match="already aborted"):
                services.event_insert_guarded(_built(org))
        assert ctx.captured_queries == []
        transaction.set_rollback(True)


def test_guarded_insert_failure_restores_the_transaction(org, settings):
    """A real error of the INSERT (a price overflowing the integer column) is rolled back
    to the savepoint: the transaction goes on, an earlier write in it is kept."""
    from django.db import DataError

    event_record(organization=org, event_name="doc.upload", request_id="kept")
    settings.BILLING_PRICE_BOOK = {"api.request": 3_000_000_000}
    with pytest.raises(DataError):
        services.event_insert_guarded(_built(org))
    assert not connection.needs_rollback
    assert list(BillingEvent.objects.values_list("request_id", flat=True)) == ["kept"]


def test_guarded_insert_whose_savepoint_never_existed_marks_the_transaction_for_rollback(
    org, monkeypatch
):
    """If the whole query is refused before anything runs (a syntax error: the savepoint
    is never created), the transaction cannot be restored: it is marked for rollback
    rather than committed with an aborted state."""
    from django.db import DatabaseError, transaction

    monkeypatch.setattr(services, "_GUARD_SAVEPOINT", "1 not a name")
    with transaction.atomic():
        with pytest.raises(DatabaseError):
            services.event_insert_guarded(_built(org))
        assert connection.needs_rollback


@pytest.mark.django_db(transaction=True)
def test_guarded_insert_outside_a_transaction_is_refused(org):
    from django.db.transaction import TransactionManagementError

    assert not connection.in_atomic_block
    with pytest.raises(TransactionManagementError):
        services.event_insert_guarded(_built(org, request_id="autocommit-1"))
    with cross_tenant(reason="test: nothing was written in any organization"):
        assert not BillingEvent.objects.filter(request_id="autocommit-1").exists()


def test_migration_0008_builds_and_drops_indexes_concurrently_and_leaves_the_foreign_key():
    """billing 0008 on a table of millions of events: no ACCESS EXCLUSIVE lock, no
    re-validation of the foreign key (sqlmigrate prints what migrate would run)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sqlmigrate", "billing", "0008", stdout=out)
    sql = out.getvalue()
    assert "CREATE INDEX CONCURRENTLY" in sql and "DROP INDEX CONCURRENTLY" in sql
    assert "FOREIGN KEY" not in sql and "ALTER TABLE" not in sql


@pytest.mark.parametrize("path", ["guarded", "unnest", "copy"])
def test_an_event_whose_id_exists_is_an_error_not_a_dropped_event(org, path):
    """Only the unique key deduplicates (it is the INSERT's conflict target): an event
    without request id whose id is already in the table (the same instance saved twice)
    is refused with an IntegrityError on every write path, never skipped in silence."""
    from django.db import IntegrityError, transaction

    saved = services.event_build(organization=org, event_name="doc.upload")
    assert events_record([saved]) == [saved]
    again = services.event_build(organization=org, event_name="doc.upload")
    again.id = saved.id
    with pytest.raises(IntegrityError, match="billing_events_pkey"), transaction.atomic():
        if path == "guarded":
            services.event_insert_guarded(again)
        else:
            events_record([again] * (ingest.COPY_MIN_ROWS if path == "copy" else 1))
    assert BillingEvent.objects.filter(organization=org).count() == 1
