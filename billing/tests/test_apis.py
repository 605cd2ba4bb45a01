import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from procrastinate.contrib.django import app

from billing import selectors, usage
from billing.models import BillingEvent, UsageAggregate
from billing.tests.factories import BillingEventFactory, flat_prices
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.dburl import owner_analyze
from tenancy.tests.factories import (
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    member_of,
)
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def ny_org(org):
    """``org`` billed in New York time (EDT, UTC-4, until 2 Nov 2025 02:00; then EST, UTC-5)."""
    org.billing_timezone = "America/New_York"
    org.save(update_fields=["billing_timezone"])
    return org


@pytest.fixture
def month_fixture(ny_org, owner, outsider_org, settings):
    """Events around the November 2025 boundaries, in New York time; the plans price
    api.request at 2 cents (the price on the events of the month) and doc.processed at 1."""
    settings.BILLING_PLANS = flat_prices(
        settings.BILLING_PLANS, {"api.request": "2", "doc.processed": "1"}
    )
    make = BillingEventFactory
    # 31 Oct 23:30 EDT = 1 Nov 03:30 UTC: October for New York (excluded)
    make(organization=ny_org, created_at=utc(2025, 11, 1, 3, 30), unit_cost_cents=100)
    # 1 Nov 00:30 EDT = 04:30 UTC: November (included)
    make(organization=ny_org, user=owner, created_at=utc(2025, 11, 1, 4, 30), unit_cost_cents=2)
    make(
        organization=ny_org,
        user=owner,
        created_at=utc(2025, 11, 15, 12),
        unit_cost_cents=2,
        dimensions={"route": "/api/v1/cases/{pk}/"},
    )
    # 30 Nov 23:59 EST = 1 Dec 04:59 UTC: November (included)
    make(
        organization=ny_org,
        created_at=utc(2025, 12, 1, 4, 59),
        unit_cost_cents=2,
        dimensions={"route": "/api/v1/cases/"},
    )
    # 1 Dec 00:00 EST = 05:00 UTC: December (excluded: periods are half-open)
    make(organization=ny_org, created_at=utc(2025, 12, 1, 5, 0), unit_cost_cents=100)
    # three half pages at 1 cent: 1.5 cents, rounded once at the line -> 2
    for day in (2, 3, 3):
        make(
            organization=ny_org,
            event_name="doc.processed",
            event_type="document",
            unit="page",
            quantity=Decimal("0.5"),
            unit_cost_cents=1,
            request_id=None,
            created_at=utc(2025, 11, day, 15),
        )
    # another organization's event in the same period: never counted
    make(organization=outsider_org, created_at=utc(2025, 11, 10), unit_cost_cents=1000)
    return ny_org


def summary_url(org, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/billing/usage-summary/{org.pk}/" + (f"?{query}" if query else "")


def report_url(org, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/billing/usage-report/{org.pk}/?{query}"


def test_summary_over_a_month_in_new_york(api, month_fixture):
    response = api.get(summary_url(month_fixture, start="2025-11-01", end="2025-12-01"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["timezone"] == "America/New_York"
    assert body["start"] == "2025-11-01T04:00:00Z"
    assert body["end"] == "2025-12-01T05:00:00Z"
    assert body["lines"] == [
        {
            "event_name": "api.request",
            "count": 3,
            "quantity": "3.0000",
            "included": "0.0000",
            "billable": "3.0000",
            "cost_cents": 6,
            "pricing": "plan",
        },
        {
            "event_name": "doc.processed",
            "count": 3,
            "quantity": "1.5000",
            "included": "0.0000",
            "billable": "1.5000",
            "cost_cents": 2,
            "pricing": "plan",
        },
    ]
    assert body["total_cost_cents"] == 8


def test_summary_defaults_to_the_current_billing_month(api, ny_org, settings):
    settings.BILLING_PLANS = flat_prices(settings.BILLING_PLANS, {"api.request": "5"})
    BillingEventFactory(organization=ny_org, unit_cost_cents=5)
    body = api.get(summary_url(ny_org)).json()
    start, end = selectors.month_period(ny_org)
    assert body["start"] == start.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert body["end"] == end.astimezone(UTC).isoformat().replace("+00:00", "Z")
    # the fixture event only: this GET's own api.request is written after the view
    assert body["lines"] == [
        {
            "event_name": "api.request",
            "count": 1,
            "quantity": "1.0000",
            "included": "0.0000",
            "billable": "1.0000",
            "cost_cents": 5,
            "pricing": "plan",
        }
    ]


def test_month_period_in_new_york():
    class Org:
        billing_timezone = "America/New_York"

    start, end = selectors.month_period(Org(), now=utc(2025, 12, 1, 4, 59))
    assert (start.astimezone(UTC), end.astimezone(UTC)) == (
        utc(2025, 11, 1, 4),
        utc(2025, 12, 1, 5),
    )


def test_report_by_day_uses_the_billing_timezone(api, month_fixture):
    body = api.get(report_url(month_fixture, start="2025-11-01", end="2025-12-01")).json()
    assert body["group_by"] == "day"
    rows = [(r["day"], r["event_name"], r["count"], r["cost_cents"]) for r in body["rows"]]
    assert rows == [
        ("2025-11-01", "api.request", 1, 2),
        ("2025-11-02", "doc.processed", 1, 1),  # 0.5 rounds half-up to 1
        ("2025-11-03", "doc.processed", 2, 1),
        ("2025-11-15", "api.request", 1, 2),
        ("2025-11-30", "api.request", 1, 2),
    ]


def test_report_by_route_and_by_user(api, month_fixture, owner):
    params = {"start": "2025-11-01", "end": "2025-12-01"}
    by_route = api.get(report_url(month_fixture, group_by="route", **params)).json()["rows"]
    assert list(by_route[0]) == ["route", "event_name", "count", "quantity", "cost_cents"]
    assert [(r["route"], r["event_name"], r["count"]) for r in by_route] == [
        ("/api/v1/cases/", "api.request", 1),
        ("/api/v1/cases/{pk}/", "api.request", 1),
        (None, "api.request", 1),
        (None, "doc.processed", 3),
    ]
    by_user = api.get(report_url(month_fixture, group_by="user", **params)).json()["rows"]
    assert list(by_user[0])[:3] == ["user_id", "user_email", "event_name"]
    assert [(r["user_id"], r["user_email"], r["event_name"], r["count"]) for r in by_user] == [
        (owner.pk, owner.email, "api.request", 2),
        (None, None, "api.request", 1),
        (None, None, "doc.processed", 3),
    ]


def test_bad_query_parameters_are_400(api, org):
    for params in (
        {"start": "yesterday", "end": "2025-12-01"},
        {"start": "2025-12-01"},
        {"start": "2025-12-01", "end": "2025-11-01"},
    ):
        response = api.get(summary_url(org, **params))
        assert response.status_code == 400
        assert response.json()["code"] == "invalid"
    response = api.get(report_url(org, group_by="planet"))
    assert response.status_code == 400
    assert "group_by" in response.json()["errors"]


def test_outsider_gets_404_for_summary_and_report(outsider_api, month_fixture):
    for url in (summary_url(month_fixture), report_url(month_fixture, group_by="day")):
        response = outsider_api.get(url)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_unknown_organization_is_404(api):
    import uuid

    assert api.get(f"/api/v1/billing/usage-summary/{uuid.uuid4()}/").status_code == 404


def test_member_of_two_organizations_reads_the_other_one(month_fixture, outsider_org):
    user = member_of(outsider_org, email="both@example.test")
    MembershipFactory(organization=month_fixture, user=user)
    client = bearer_client(user)  # acting in outsider_org, reading month_fixture
    body = client.get(summary_url(month_fixture, start="2025-11-01", end="2025-12-01")).json()
    assert body["total_cost_cents"] == 8


def test_staff_reads_any_organization(month_fixture, outsider_org):
    staff = member_of(outsider_org, email="staff@example.test", is_staff=True)
    body = (
        bearer_client(staff)
        .get(summary_url(month_fixture, start="2025-11-01", end="2025-12-01"))
        .json()
    )
    assert body["total_cost_cents"] == 8


def _queries(client, url) -> int:
    client.get(url)
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_summary_and_report_run_a_bounded_number_of_queries(api, ny_org, owner):
    urls = [
        summary_url(ny_org, start="2025-11-01", end="2025-12-01"),
        report_url(ny_org, start="2025-11-01", end="2025-12-01", group_by="user"),
    ]
    small = [_queries(api, url) for url in urls]
    BillingEventFactory.create_batch(
        200, organization=ny_org, user=owner, created_at=utc(2025, 11, 5)
    )
    for _ in range(20):
        user = UserFactory()
        BillingEventFactory.create_batch(
            3, organization=ny_org, user=user, created_at=utc(2025, 11, 6)
        )
    large = [_queries(api, url) for url in urls]
    assert small == large
    # user, savepoint, SET LOCAL, membership (request) + organization, savepoint,
    # SET LOCAL, membership, ONE aggregate, SET LOCAL, release (view) + metering (3)
    # + release of the request savepoint used by the test transaction.
    print(f"usage-summary, usage-report queries: {large}")
    # (+2 in tests only: inside the test transaction the tenant context saves and
    # restores the app.* settings around its savepoint.)
    assert all(n <= 18 for n in large), large


#: The index the summary and report are meant to use (billing/models.py, Meta.indexes).
PERIOD_INDEX = "billing_ev_org_created_idx"


@pytest.fixture
def realistic_volume(ny_org):
    """6,000 events over four months (Sep-Dec 2025) of six organizations (1,000 each),
    three users each plus user-less events, mixed event names and routes; then ANALYZE,
    so the planner costs plans on real statistics instead of an empty table's."""
    rng = random.Random(20251101)
    orgs = [ny_org] + [OrganizationFactory() for _ in range(5)]
    users = {org.pk: [member_of(org) for _ in range(3)] + [None] for org in orgs}
    routes = ["/api/v1/cases/", "/api/v1/cases/{pk}/", "/api/v1/clients/", "/api/v1/documents/"]
    names = ["api.request"] * 8 + ["doc.upload", "doc.processed"]
    first = utc(2025, 9, 1)
    events = []
    for i in range(6000):
        org = orgs[i % len(orgs)]
        name = rng.choice(names)
        events.append(
            BillingEvent(
                organization=org,
                user=rng.choice(users[org.pk]),
                event_type=name.split(".")[0],
                event_name=name,
                request_id=f"vol-{i}",
                unit="call",
                unit_cost_cents=1,
                dimensions={"route": rng.choice(routes)} if name == "api.request" else {},
                created_at=first + timedelta(seconds=rng.randrange(120 * 86400)),
            )
        )
    BillingEvent.objects.bulk_create(events)
    with owner_analyze() as analyze, connection.cursor() as cursor:
        # ANALYZE is the owner's (as autovacuum's) job: the app role the tests log in as
        # may not analyze the table, and a separate owner connection would not see the
        # test's uncommitted rows; ``owner_analyze`` runs it as the owner in this very
        # transaction (a SECURITY DEFINER function that lives for this block only).
        analyze(cursor, "billing_events")
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'billing_events'")
        assert cursor.fetchone()[0] == 6000  # the statistics saw the rows
    return ny_org


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _explain_selector(organization, call) -> list[dict]:
    """Run ``call`` (a selector) in the organization's tenant context as the API does,
    check it ran ONE query on billing_events, and return that exact query's plan nodes."""
    with tenant_context(organization):
        with CaptureQueriesContext(connection) as ctx:
            call()
        sqls = [q["sql"] for q in ctx.captured_queries if "billing_events" in q["sql"]]
        assert len(sqls) == 1, sqls
        with connection.cursor() as cursor:
            # the SQL psycopg sent (parameters bound client-side), so this is its plan
            cursor.execute("EXPLAIN (FORMAT JSON) " + sqls[0])
            plan = cursor.fetchone()[0]
    return list(_plan_nodes(plan[0]["Plan"]))


@pytest.mark.parametrize("group_by", ["summary", "day", "route", "user"])
def test_summary_and_report_use_the_organization_created_at_index(realistic_volume, group_by):
    """The planner, on 6,000 analysed rows, reads one organization's month (~250 rows)
    through billing_ev_org_created_idx with BOTH columns in the index condition, for
    the summary and each group_by of the report: no sequential scan of billing_events
    and no other billing index (the unique (organization, event_name, request_id)
    index also leads with organization_id, and was accepted by a looser check).
    Measured (PostgreSQL 15): a Bitmap Index Scan on the index under a Bitmap Heap
    Scan for all four; 'user' adds a hash join to tenancy_user (a seq scan of that
    small table, which is fine and not asserted)."""
    org = realistic_volume
    start, end = utc(2025, 11, 1, 4), utc(2025, 12, 1, 5)  # November in New York
    if group_by == "summary":

        def call():
            return usage.usage_summary(organization=org, start=start, end=end)

    else:

        def call():
            return usage.usage_report(organization=org, start=start, end=end, group_by=group_by)

    nodes = _explain_selector(org, call)
    on_events = [n for n in nodes if n.get("Relation Name") == "billing_events"]
    assert on_events, nodes
    assert all(n["Node Type"] != "Seq Scan" for n in on_events), on_events
    indexes = [n for n in nodes if n.get("Index Name", "").startswith("billing_")]
    assert [n["Index Name"] for n in indexes] == [PERIOD_INDEX], indexes
    condition = indexes[0]["Index Cond"]
    assert "organization_id =" in condition and "created_at >=" in condition, condition
    assert "created_at <" in condition, condition


def test_events_list_is_scoped_filtered_and_paginated(api, org, outsider_org):
    BillingEventFactory.create_batch(3, organization=org, created_at=utc(2025, 11, 2))
    BillingEventFactory(
        organization=org, event_name="doc.upload", unit="document", created_at=utc(2025, 11, 3)
    )
    BillingEventFactory(organization=org, status=1, created_at=utc(2025, 10, 3))
    BillingEventFactory(organization=outsider_org, created_at=utc(2025, 11, 2))
    response = api.get("/api/v1/billing/events/?page_size=2&start=2025-11-01T00:00:00Z")
    body = response.json()
    assert response.status_code == 200
    assert body["count"] == 4
    assert len(body["results"]) == 2
    names = api.get("/api/v1/billing/events/?event_name=doc.upload").json()["results"]
    assert [e["event_name"] for e in names] == ["doc.upload"]
    posted = api.get("/api/v1/billing/events/?status=1").json()["results"]
    assert [e["status"] for e in posted] == ["posted"]
    window = api.get(
        "/api/v1/billing/events/?start=2025-11-02T00:00:00Z&end=2025-11-03T00:00:00Z"
    ).json()
    assert window["count"] == 3
    assert api.get("/api/v1/billing/events/?status=9").status_code == 400


@pytest.mark.parametrize(
    ("param", "expected"),
    [("0", "pending"), ("pending", "pending"), ("1", "posted"), ("posted", "posted")],
)
def test_events_status_filter_takes_the_value_or_the_name(api, org, param, expected):
    """The responses show status as "pending"/"posted": the filter accepts those names
    as well as the stored 0/1."""
    BillingEventFactory.create_batch(2, organization=org, status=0)
    BillingEventFactory(organization=org, status=1)
    response = api.get(f"/api/v1/billing/events/?status={param}")
    assert response.status_code == 200, response.content
    statuses = [e["status"] for e in response.json()["results"]]
    assert statuses == [expected] * (2 if expected == "pending" else 1)


@pytest.mark.parametrize("param", ["9", "Posted", "failed", "-1"])
def test_events_status_filter_rejects_other_values(api, param):
    response = api.get(f"/api/v1/billing/events/?status={param}")
    assert response.status_code == 400
    assert "status" in response.json()["errors"]


def test_outsider_sees_none_of_our_events(outsider_api, org):
    BillingEventFactory.create_batch(2, organization=org)
    body = outsider_api.get("/api/v1/billing/events/").json()
    assert body["count"] == 0


def test_events_need_authentication(anon_api):
    assert anon_api.get("/api/v1/billing/events/").status_code == 401


def test_health_reports_pending_and_posted(api, org, outsider_org):
    BillingEventFactory(organization=org, created_at=utc(2025, 11, 1))
    BillingEventFactory(organization=org, created_at=utc(2025, 11, 2))
    BillingEventFactory(organization=org, status=1, created_at=utc(2025, 10, 30))
    BillingEventFactory(organization=outsider_org, created_at=utc(2025, 1, 1))
    body = api.get("/api/v1/billing/health/").json()
    assert body["scope"] == "organization"
    assert body["pending_count"] == 2
    assert body["oldest_pending_at"] == "2025-11-01T00:00:00Z"
    assert body["oldest_pending_age_seconds"] > 0
    assert body["last_posted_event_at"] == "2025-10-30T00:00:00Z"
    assert isinstance(body["metering_write_failures"], int)
    # health checks are not billed
    assert not BillingEvent.objects.filter(dimensions__endpoint="/api/v1/billing/health/").exists()


def test_staff_health_covers_all_organizations(org, outsider_org):
    BillingEventFactory(organization=org)
    BillingEventFactory(organization=outsider_org)
    staff = member_of(org, email="ops@example.test", is_staff=True)
    body = bearer_client(staff).get("/api/v1/billing/health/").json()
    assert (body["scope"], body["pending_count"]) == ("all", 2)


def test_outsider_health_does_not_count_our_events(outsider_api, org):
    BillingEventFactory(organization=org)
    assert outsider_api.get("/api/v1/billing/health/").json()["pending_count"] == 0


def _defer(task_name, organization, **configure):
    """Defer a job of ``task_name`` (no such task: the worker fails it) for ``organization``."""
    deferrer = app.configure_task(task_name, allow_unknown=True, **configure)
    return deferrer.defer(organization_id=str(organization.pk))


def test_health_reports_the_organizations_failed_and_waiting_jobs(api, org, outsider_org):
    _defer("tests.unknown_task", org)
    _defer("tests.unknown_task", outsider_org)
    assert [ran.outcome for ran in run_jobs()] == ["failed", "failed"]
    waiting = _defer("tests.waiting", org)
    _defer("tests.waiting", outsider_org)
    _defer("tests.later", org, schedule_in={"hours": 1})  # not due: not waiting
    with connection.cursor() as cursor:  # deferred two minutes ago
        cursor.execute(
            "UPDATE procrastinate_events SET at = now() - interval '120 seconds' "
            "WHERE job_id = %s AND type = 'deferred'",
            [waiting],
        )
    body = api.get("/api/v1/billing/health/").json()
    assert (body["failed_jobs"], body["waiting_jobs"]) == (1, 1)
    assert 119 < body["oldest_waiting_job_age_seconds"] < 600


def test_staff_health_counts_every_job_and_none_waiting_is_null(org, outsider_org):
    staff = member_of(org, email="ops@example.test", is_staff=True)
    body = bearer_client(staff).get("/api/v1/billing/health/").json()
    assert (body["failed_jobs"], body["waiting_jobs"]) == (0, 0)
    assert body["oldest_waiting_job_age_seconds"] is None
    _defer("tests.waiting", org)
    _defer("tests.waiting", outsider_org)
    app.configure_task("tests.no_organization", allow_unknown=True).defer()
    body = bearer_client(staff).get("/api/v1/billing/health/").json()
    assert body["waiting_jobs"] == 3
    assert body["oldest_waiting_job_age_seconds"] >= 0


def _outbox(organization, statuses):
    """One Stripe outbox row of ``organization`` per status in ``statuses``."""
    hour = utc(2025, 11, 1)
    for sequence, status in enumerate(statuses, start=1):
        UsageAggregate.objects.create(
            organization=organization,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=hour,
            sequence=sequence,
            value=1,
            identifier=f"gl-{organization.pk}-api_requests-{sequence}",
            status=status,
        )


def test_health_counts_the_outbox_statuses_in_one_query(org, outsider_org):
    _outbox(org, ["failed", "failed", "pending", "needs_reconciliation", "sent", "sent"])
    _outbox(outsider_org, ["failed", "pending"])
    with tenant_context(org):
        with CaptureQueriesContext(connection) as ctx:
            health = selectors.pipeline_health(organization=org)
    counts = [health[f"{k}_aggregates"] for k in ("failed", "unsent", "reconciliation")]
    assert counts == [2, 1, 1]
    outbox = [q["sql"] for q in ctx.captured_queries if "billing_usageaggregate" in q["sql"]]
    assert len(outbox) == 1, outbox  # filtered COUNTs, not one COUNT per status
    assert len(ctx.captured_queries) == 4  # events x2, last report, outbox
    with cross_tenant(reason="test: the staff view"):
        everyone = selectors.pipeline_health(organization=None)
    assert [everyone[f"{k}_aggregates"] for k in ("failed", "unsent", "reconciliation")] == [
        3,
        2,
        1,
    ]
