"""The COPY ingest path (``billing.ingest.rows_copy_insert``) against the one-statement
``unnest`` path on the same input, row for row: duplicates in the batch and against the
table, mixed organizations, ``BillingEvent`` items, a bad event in the middle; and what
it keeps of the guarantees (row-level security, one transaction, a named error)."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import DataError, ProgrammingError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import ingest, services
from billing.models import BillingEvent
from billing.serializers import BillingEventSerializer
from billing.services import InvalidBillingEvent, events_ingest, events_record
from tenancy.context import cross_tenant, tenant_context
from tenancy.tests.test_rls import rls_on  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
#: Every column but the id, which each path mints itself (a UUIDv7 per event).
COMPARED = [c for c in ingest.EVENT_COLUMNS if c != "id"] + ["usage_aggregate_id"]


def _batch(org, other, owner, n: int = 300) -> list:
    """``n`` events over two organizations: every 7th repeats an earlier request id of its
    organization (a duplicate inside the batch), every 11th repeats one already in the
    table (``old-...``), every 13th has no request id (never deduplicated), every 17th is
    an unsaved ``BillingEvent``; several units, prices (explicit and from the price
    book), users, statuses and dimensions with a datetime and a decimal."""
    items = []
    for i in range(n):
        organization = org if i % 3 else other
        request_id = f"req-{i}"
        if i % 7 == 0 and i:
            request_id = f"req-{i - 3}"  # same organization as event i-3 (i % 3 equal)
        event_name = ("api.request", "doc.upload", "doc.processed")[i % 3]
        if i % 11 == 0:
            request_id, event_name = f"old-{i % 2}", "api.request"
        if i % 13 == 0:
            request_id = None
        fields = {
            "organization": organization,
            "event_name": event_name,
            "request_id": request_id,
            "quantity": Decimal(i % 5) + Decimal("0.25"),
            "unit": ("call", "document", "page")[i % 3],
            "dimensions": {"i": i, "at": T0 + timedelta(seconds=i), "size": Decimal("1.5")},
            "created_at": T0 + timedelta(milliseconds=i),
        }
        if i % 4 == 0:
            fields["unit_cost_cents"] = i % 9
        if i % 5 == 0 and organization == org:
            fields["user"] = owner
        if i % 6 == 0:
            fields["status"] = 1
        if i % 17 == 0:
            fields = services.event_build(**fields)
        items.append(fields)
    return items


def _table() -> list[tuple]:
    """Every billing event, without its id, in a stable order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(COMPARED)}, dimensions::text FROM billing_events "
            "ORDER BY organization_id, created_at, event_name, request_id"
        )
        return cursor.fetchall()


def _run(fn, org, other, owner, *, copy: bool):
    """``fn`` on a fresh copy of ``_batch`` after two events already in the table, inside a
    savepoint that is rolled back; returns (what ``fn`` returned, the table then)."""
    with transaction.atomic():
        for organization, key in ((org, "old-0"), (other, "old-1"), (org, "old-1")):
            services.event_record(
                organization=organization, event_name="api.request", request_id=key, created_at=T0
            )
        result = fn(_batch(org, other, owner), copy=copy)
        table = _table()
        transaction.set_rollback(True)
    return result, table


def _key(item) -> tuple:
    """(organization id, event name, request id) of a batch item."""
    if isinstance(item, BillingEvent):
        return (item.organization_id, item.event_name, item.request_id)
    return (item["organization"].pk, item["event_name"], item.get("request_id"))


def _summary(event: BillingEvent) -> tuple:
    return tuple(getattr(event, a) for a in ingest.EVENT_ATTNAMES if a != "id")


def test_copy_path_writes_and_returns_the_same_as_the_unnest_path(org, outsider_org, owner):
    copied, copied_table = _run(events_record, org, outsider_org, owner, copy=True)
    unnested, unnested_table = _run(events_record, org, outsider_org, owner, copy=False)
    assert copied_table == unnested_table
    assert [_summary(e) for e in copied] == [_summary(e) for e in unnested]
    # The batch really exercised the rules: duplicates (inside it and against the table)
    # were skipped, and the survivors are the first occurrences, in input order.
    assert 200 < len(copied) < 300
    assert len(copied_table) == len(copied) + 3
    keys = [(e.organization_id, e.event_name, e.request_id) for e in copied if e.request_id]
    assert len(keys) == len(set(keys))
    existing = {(org.pk, "old-0"), (outsider_org.pk, "old-1"), (org.pk, "old-1")}
    olds = {(o, r) for o, name, r in keys if name == "api.request" and r.startswith("old-")}
    assert olds == {(outsider_org.pk, "old-0")}, "a key already in the table was written again"
    assert existing.isdisjoint(olds)
    assert [e.created_at for e in copied] == sorted(e.created_at for e in copied)
    first = {}  # key -> the position of its first occurrence in the batch
    for i, item in enumerate(_batch(org, outsider_org, owner)):
        first.setdefault(_key(item), i)
    duplicated = [e for e in copied if e.request_id and e.request_id.startswith("req-")]
    assert duplicated and all(
        e.dimensions["i"] == first[(e.organization_id, e.event_name, e.request_id)]
        for e in duplicated
    ), "a later occurrence of a key won over the first"
    # A BillingEvent item that was created is returned as itself.
    given = [e for e in _batch(org, outsider_org, owner) if isinstance(e, BillingEvent)]
    assert any(type(e) is BillingEvent and e.request_id == given[1].request_id for e in copied)


def test_events_ingest_counts_what_events_record_returns(org, outsider_org, owner):
    count, count_table = _run(events_ingest, org, outsider_org, owner, copy=True)
    unnest_count, _ = _run(events_ingest, org, outsider_org, owner, copy=False)
    returned, table = _run(events_record, org, outsider_org, owner, copy=True)
    assert count == unnest_count == len(returned)
    assert count_table == table


@pytest.mark.parametrize("copy", [True, False])
def test_a_bad_event_in_the_middle_is_named_and_nothing_of_its_batch_is_written(org, copy):
    batch = [
        {"organization": org, "event_name": "api.request", "request_id": f"m-{i}"}
        for i in range(200)
    ]
    batch[117]["quantity"] = "-2"
    with pytest.raises(InvalidBillingEvent, match=r"^event 117: quantity must be"):
        events_ingest(batch, copy=copy)
    # Found before anything was sent: the transaction goes on.
    assert not connection.needs_rollback
    assert BillingEvent.objects.count() == 0
    del batch[117]["quantity"]
    assert events_ingest(batch, copy=copy) == 200


def test_a_value_postgresql_refuses_while_copying_names_the_event(org):
    """Values Python does not check (a resource id that is no UUID) are refused by the
    COPY: the error names the event and the column; the batch's transaction is aborted
    (the caller rolls it back), so nothing of the batch stays."""
    batch = [
        {"organization": org, "event_name": "doc.upload", "request_id": f"v-{i}"}
        for i in range(100)
    ]
    batch[70]["resource_id"] = "not-a-uuid"
    with pytest.raises(InvalidBillingEvent, match=r"^event 70 \(resource_id\): invalid input"):
        with transaction.atomic():
            events_ingest(batch, copy=True)
    assert BillingEvent.objects.count() == 0
    # The one-statement path refuses it too, as a database error.
    with pytest.raises(DataError), transaction.atomic():
        events_ingest(batch, copy=False)


@pytest.mark.django_db(transaction=True)
def test_the_copy_path_is_three_statements_whatever_the_size(org, outsider_org):
    """Each batch in its own transaction (real commits): CREATE (a no-op after the first),
    COPY, INSERT. A second batch in one transaction adds a DELETE (tested below)."""

    def statements(n: int, tag: str) -> list[str]:
        events = [
            {"organization": (org, outsider_org)[i % 2], "event_name": "api.request"}
            | {"request_id": f"{tag}-{i}"}
            for i in range(n)
        ]
        with cross_tenant(reason="test: a batch of two organizations, one transaction"):
            with CaptureQueriesContext(connection) as ctx:
                assert len(events_record(events)) == n
        return [q["sql"].split(" ", 3)[:3] for q in ctx.captured_queries]

    small, large = statements(1000, "s"), statements(3000, "l")
    assert (
        small
        == large
        == [
            ["CREATE", "TEMP", "TABLE"],
            ["COPY", ingest.STAGE, "(n,"],
            ["INSERT", "INTO", "billing_events"],
        ]
    )


def test_several_batches_in_one_transaction(org):
    with transaction.atomic():
        for batch in range(3):
            events = [
                {"organization": org, "event_name": "api.request", "request_id": f"t{batch}-{i}"}
                for i in range(ingest.COPY_MIN_ROWS)
            ]
            assert events_ingest(events) == ingest.COPY_MIN_ROWS
    assert BillingEvent.objects.count() == 3 * ingest.COPY_MIN_ROWS


def test_events_without_request_id_in_two_batches_of_one_transaction_are_written_once(org):
    """The staging table keeps a batch's rows until the transaction ends: a second batch in
    the same transaction empties it first (one more statement), so it inserts only its own
    rows (events without a request id are never deduplicated: a leftover row would be
    written twice)."""
    batch = [{"organization": org, "event_name": "doc.upload"}] * ingest.COPY_MIN_ROWS
    with transaction.atomic():
        assert events_ingest(batch) == ingest.COPY_MIN_ROWS
        with CaptureQueriesContext(connection) as second:
            assert events_ingest(batch) == ingest.COPY_MIN_ROWS
        assert [q["sql"] for q in second.captured_queries][1] == ingest.STAGE_EMPTY
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {ingest.STAGE}")
            assert cursor.fetchone()[0] == ingest.COPY_MIN_ROWS  # the second batch's only
    assert BillingEvent.objects.count() == 2 * ingest.COPY_MIN_ROWS


@pytest.mark.django_db(transaction=True)
def test_the_staging_table_is_made_once_per_session_and_is_empty_after_commit(org):
    """Made by the session's first batch (a temporary table: PostgreSQL manual, CREATE
    TABLE, "TEMPORARY"), kept, not made again by later batches (its catalog row keeps
    its xmin), emptied by each batch's COMMIT (``ON COMMIT DELETE ROWS``: a later
    transaction's batch needs no ``DELETE``); after a failed batch the next one still
    writes. Real commits: each batch is its own transaction."""

    def staged() -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {ingest.STAGE}")
            return cursor.fetchone()[0]

    def stage() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.xmin::text, (SELECT count(*) FROM pg_class WHERE relname = %s "
                "AND relnamespace = pg_my_temp_schema()) "
                "FROM pg_class c WHERE c.oid = to_regclass(%s)",
                [ingest.STAGE_NAME, ingest.STAGE],
            )
            return cursor.fetchone()

    def batch(tag: str) -> list[dict]:
        return [
            {"organization": org, "event_name": "api.request", "request_id": f"{tag}-{i}"}
            for i in range(ingest.COPY_MIN_ROWS)
        ]

    def ingest_in_its_transaction(events) -> int:
        with tenant_context(org):
            return events_ingest(events)

    assert ingest_in_its_transaction(batch("one")) == ingest.COPY_MIN_ROWS
    made = stage()
    assert made is not None and made[1] == 1
    assert staged() == 0
    bad = batch("bad")
    bad[5]["resource_id"] = "not-a-uuid"
    with pytest.raises(InvalidBillingEvent, match="event 5"):
        ingest_in_its_transaction(bad)
    with CaptureQueriesContext(connection) as two:
        assert ingest_in_its_transaction(batch("two")) == ingest.COPY_MIN_ROWS
    assert ingest.STAGE_EMPTY not in [q["sql"] for q in two.captured_queries]
    assert stage() == made
    assert staged() == 0
    with tenant_context(org):
        assert BillingEvent.objects.filter(organization=org).count() == 2 * ingest.COPY_MIN_ROWS


@pytest.mark.rls_raw
@pytest.mark.parametrize("copy", [True, False])
def test_row_level_security_applies_to_the_insert_from_the_staging_table(
    rls_on,  # noqa: F811
    org,
    outsider_org,
    copy,
):
    """In one organization's context, a batch holding one row of another organization
    is refused whole by the table's policy (WITH CHECK), on either path."""
    batch = [
        {"organization": org, "event_name": "api.request", "request_id": f"r-{i}"}
        for i in range(100)
    ]
    batch[40]["organization"] = outsider_org
    with tenant_context(org):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic():
                events_ingest(batch, copy=copy)
        assert BillingEvent.objects.count() == 0
        del batch[40]
        assert events_ingest(batch, copy=copy) == 99


def test_column_lists_are_derived_from_the_model():
    """One list, from ``BillingEvent._meta``: every concrete column is written except the
    ones set later (nullable), in model order, by the unnest INSERT, the staging table,
    the COPY and the API serializer (which leaves out only the organization)."""
    concrete = [f for f in BillingEvent._meta.concrete_fields]
    assert [f.name for f in concrete if f.name in ingest.SET_LATER] == list(ingest.SET_LATER)
    assert all(f.null for f in concrete if f.name in ingest.SET_LATER)
    written = tuple(f.column for f in concrete if f.name not in ingest.SET_LATER)
    assert ingest.EVENT_COLUMNS == written
    assert [c for c, _ in ingest.UNNEST_COLUMNS] == list(ingest.EVENT_COLUMNS)
    cols = ", ".join(ingest.EVENT_COLUMNS)
    assert f"INSERT INTO billing_events ({cols}) SELECT " in ingest.UNNEST_INSERT
    assert ingest.STAGE_INSERT.startswith(
        f"INSERT INTO billing_events ({cols}) SELECT {cols} FROM {ingest.STAGE} ORDER BY n "
    )
    assert ingest.STAGE_COPY == f"COPY {ingest.STAGE} (n, {cols}) FROM STDIN"
    assert BillingEventSerializer.Meta.fields == [
        f.name for f in concrete if f.name not in ingest.SET_LATER and f.name != "organization"
    ]


def test_event_values_order_matches_the_columns(org, owner):
    resource = uuid.uuid4()
    values = ingest.event_values(
        organization=org,
        user=owner,
        event_name="doc.processed",
        resource_id=resource,
        request_id="x",
        quantity=2,
        unit="page",
        dimensions={"a": 1},
        status=1,
        created_at=T0,
    )
    by_name = dict(zip(ingest.EVENT_ATTNAMES, values, strict=True))
    assert by_name == {
        "id": values[0],
        "organization_id": org.pk,
        "user_id": owner.pk,
        "event_type": "document",
        "event_name": "doc.processed",
        "resource_id": resource,
        "request_id": "x",
        "quantity": Decimal("2"),
        "unit": "page",
        "unit_cost_cents": by_name["unit_cost_cents"],
        "dimensions": {"a": 1},
        "status": 1,
        "created_at": T0,
    }
    assert isinstance(values[0], uuid.UUID) and values[0].version == 7
    with pytest.raises(InvalidBillingEvent, match="unit_cost_cents"):
        ingest.event_values(organization=org, event_name="x", unit_cost_cents=2**31)


def test_dimensions_json_replaces_nul_characters_and_keeps_a_literal_escape():
    text = ingest.dimensions_json({"a\x00": ["x\x00y", {"k": "\x00"}], "lit": "\\u0000", "n": 1})
    assert "\\u0000" not in text.replace("\\\\u0000", "")
    assert json.loads(text) == {"a\ufffd": ["x\ufffdy", {"k": "\ufffd"}], "lit": "\\u0000", "n": 1}
    assert ingest.dimensions_json({"lit": "\\u0000"}) == '{"lit": "\\\\u0000"}'


def test_a_nul_in_dimensions_is_stored_on_every_write_path(org):
    """The row path, the unnest path and the COPY path all write the replaced text."""
    dims = {"endpoint": "/x\x00/"}
    rows = [{"organization": org, "event_name": "api.request", "dimensions": dims}]
    assert events_ingest(rows, copy=False) == 1
    assert events_ingest(rows * ingest.COPY_MIN_ROWS, copy=True) == ingest.COPY_MIN_ROWS
    services.event_insert_guarded(services.event_build(**rows[0], request_id="nul-1"))
    stored = set(BillingEvent.objects.values_list("dimensions__endpoint", flat=True))
    assert stored == {"/x\ufffd/"}
    assert BillingEvent.objects.count() == 2 + ingest.COPY_MIN_ROWS
