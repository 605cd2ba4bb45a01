"""The staff usage dashboard (/admin/usage/) and the usage on the organization admin:
who may see it, the month in each organization's billing time zone, currency, sorting,
charts, what needs attention, and a constant number of queries."""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import selectors
from billing.tests.factories import BillingEventFactory, UsageAggregateFactory, flat_prices
from tenancy.context import tenant_context
from tenancy.tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/admin/usage/"
# Last month: a whole month in the past, always on the period picker.
MONTH = selectors.month_start(selectors.month_start(timezone.now().date()) - timedelta(days=1))
MONTH_PARAM = f"{MONTH:%Y-%m}"


def at(day: int, hour: int = 12) -> datetime:
    """``MONTH``'s ``day`` at ``hour``:00 UTC."""
    return datetime(MONTH.year, MONTH.month, day, hour, tzinfo=UTC)


def days_in(month: date) -> int:
    return (selectors.next_month(month) - month).days


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def seed(organization, *, day, count=1, cents=1, route="/api/v1/cases/", **fields):
    return BillingEventFactory.create_batch(
        count,
        organization=organization,
        unit_cost_cents=cents,
        created_at=at(day),
        dimensions={"route": route, "method": "GET", "status_code": 200},
        **fields,
    )


# --- who may see it ------------------------------------------------------------------------


def test_anonymous_and_non_staff_are_sent_to_the_admin_login(client, org, owner):
    seed(org, day=3, cents=98765)
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    client.force_login(owner)  # a firm's owner, not staff
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert b"987.65" not in response.content


def test_staff_without_the_billing_permission_are_refused(client, org):
    seed(org, day=3, cents=98765)
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    response = client.get(URL)
    assert response.status_code == 403
    assert b"987.65" not in response.content
    staff.user_permissions.add(Permission.objects.get(codename="view_billingevent"))
    assert client.get(URL).status_code == 200


def test_bearer_token_of_a_member_does_not_open_it(api, org):
    seed(org, day=3, cents=98765)
    response = api.get(URL)
    assert response.status_code == 302
    assert b"987.65" not in response.content


# --- the page ------------------------------------------------------------------------------


def test_totals_table_and_routes_in_currency(staff_client, org, outsider_org):
    seed(org, day=3, count=3, cents=41234)  # 3 x $412.34
    seed(org, day=4, count=2, cents=1, route="/api/v1/clients/")
    seed(outsider_org, day=4, cents=150, event_name="doc.upload", quantity="2.5000", unit="page")
    BillingEventFactory(organization=org, unit_cost_cents=777, created_at=timezone.now())
    response = staff_client.get(URL, {"month": MONTH_PARAM})
    assert response.status_code == 200
    html = response.content.decode()
    totals = response.context["totals"]
    assert totals == {"organizations": 2, "count": 6, "cost_cents": 3 * 41234 + 2 + 375}
    assert "$1,240.79" in html  # 123702 + 2 + 375 cents
    assert "6 events" in html and "2 organizations" in html
    rows = {row["name"]: row for row in response.context["rows"]}
    assert rows["Acme Law"]["cost_cents"] == 123704 and rows["Acme Law"]["count"] == 5
    assert rows["Other Firm"]["cost_cents"] == 375
    assert "$1,237.04" in html and "$3.75" in html
    assert ">2.5<" in html  # quantity without trailing zeros
    assert "2.5000" not in html
    assert "Pro" in html  # the plan's label
    routes = [(r["route"], r["count"]) for r in response.context["routes"]]
    assert routes == [("/api/v1/cases/", 4), ("/api/v1/clients/", 2)]
    assert "$7.77" not in html  # this month's event is not last month's


def test_month_is_taken_in_each_organizations_billing_time_zone(staff_client):
    new_york = OrganizationFactory(name="NY Firm", billing_timezone="America/New_York")
    tokyo = OrganizationFactory(name="Tokyo Firm", billing_timezone="Asia/Tokyo")
    utc = OrganizationFactory(name="UTC Firm", billing_timezone="Not/AZone")  # -> UTC
    first = datetime(MONTH.year, MONTH.month, 1, 2, tzinfo=UTC)  # 1st, 02:00 UTC
    end = datetime.combine(selectors.next_month(MONTH), datetime.min.time(), tzinfo=UTC)
    for organization in (new_york, tokyo, utc):
        BillingEventFactory(organization=organization, unit_cost_cents=100, created_at=first)
        BillingEventFactory(
            organization=organization, unit_cost_cents=10, created_at=end - timedelta(hours=3)
        )
    amounts = {
        row["name"]: row["cost_cents"] for row in selectors.usage_by_organization(month=MONTH)
    }
    # New York: the 1st at 02:00 UTC is still last month there; the last day's 21:00 UTC is
    # in the month. Tokyo: both in the month's local dates? the last evening (21:00 UTC) is
    # already next month there.
    assert amounts == {"NY Firm": 10, "Tokyo Firm": 100, "UTC Firm": 110}
    response = staff_client.get(URL, {"month": MONTH_PARAM, "o": "name"})
    assert [row["name"] for row in response.context["rows"]] == [
        "NY Firm",
        "Tokyo Firm",
        "UTC Firm",
    ]
    assert response.context["totals"]["cost_cents"] == 220


def test_period_picker_offers_recent_months_and_refuses_others(staff_client, org):
    seed(org, day=3, cents=250)
    page = staff_client.get(URL)
    assert page.status_code == 200
    this_month = selectors.month_start(timezone.now().date())
    assert page.context["month"] == this_month
    html = page.content.decode()
    assert f'<option value="{MONTH_PARAM}">{MONTH:%B %Y}</option>' in html
    assert html.count("<option ") == 24
    chosen = staff_client.get(URL, {"month": MONTH_PARAM})
    assert chosen.context["month"] == MONTH
    assert chosen.context["totals"]["cost_cents"] == 250
    assert f'<option value="{MONTH_PARAM}" selected>' in chosen.content.decode()
    for bad in ("1999-01", "2026-13", "garbage"):
        response = staff_client.get(URL, {"month": bad})
        assert response.status_code == 200
        assert response.context["month"] == this_month
        assert "Select a valid choice" in response.content.decode()


def test_table_sorts_by_each_column_both_ways(staff_client):
    small = OrganizationFactory(name="Alpha", plan_tier="starter", subscription_status="active")
    big = OrganizationFactory(name="Beta", plan_tier="enterprise", subscription_status="unpaid")
    middle = OrganizationFactory(name="Gamma", plan_tier="pro", subscription_status="past_due")
    seed(small, day=2, count=5, cents=1)
    seed(big, day=2, count=1, cents=900)
    seed(middle, day=2, count=2, cents=50)

    def names(sort):
        response = staff_client.get(URL, {"month": MONTH_PARAM, "o": sort})
        return [row["name"] for row in response.context["rows"]]

    assert names("-amount") == ["Beta", "Gamma", "Alpha"]  # the default
    assert staff_client.get(URL, {"month": MONTH_PARAM}).context["rows"][0]["name"] == "Beta"
    assert names("amount") == ["Alpha", "Gamma", "Beta"]
    assert names("-count") == ["Alpha", "Gamma", "Beta"]
    assert names("name") == ["Alpha", "Beta", "Gamma"]
    assert names("-name") == ["Gamma", "Beta", "Alpha"]
    assert names("plan") == ["Beta", "Gamma", "Alpha"]  # enterprise < pro < starter
    assert names("subscription") == ["Alpha", "Gamma", "Beta"]  # active < past_due < unpaid
    html = staff_client.get(URL, {"month": MONTH_PARAM}).content.decode()
    assert "<td>unpaid</td>" in html and "<td>past_due</td>" in html
    headers = staff_client.get(URL, {"month": MONTH_PARAM, "o": "-amount"}).context["headers"]
    amount = next(h for h in headers if h["label"] == "Amount")
    assert amount["sorted"] == "descending" and "o=amount" in amount["url"]


def test_daily_chart_for_all_and_for_one_organization(staff_client, org, outsider_org):
    seed(org, day=2, count=2, cents=300)
    seed(org, day=9, cents=5)
    seed(outsider_org, day=9, cents=1000)
    seed(outsider_org, day=20, cents=0)  # free usage still shows a bar
    response = staff_client.get(URL, {"month": MONTH_PARAM})
    (chart,) = response.context["charts"]
    assert len(chart["bars"]) == days_in(MONTH)
    assert chart["days_with_usage"] == 3
    assert {bar["day"]: bar["cents"] for bar in chart["bars"] if bar["count"]} == {
        f"{MONTH:%Y-%m}-02": 600,
        f"{MONTH:%Y-%m}-09": 1005,
        f"{MONTH:%Y-%m}-20": 0,
    }
    html = response.content.decode()
    assert len(re.findall(r'<rect class="bar[ "]', html)) == days_in(MONTH)
    assert f'data-points="{days_in(MONTH)}"' in html
    assert "$16.05" in html
    one = staff_client.get(URL, {"month": MONTH_PARAM, "organization": org.pk})
    assert one.status_code == 200
    assert [c["days_with_usage"] for c in one.context["charts"]] == [3, 2]
    assert one.context["charts"][1]["total_cents"] == 605
    assert one.context["charts"][1]["label"] == f"Acme Law, {MONTH:%B %Y}"
    missing = "00000000-0000-0000-0000-000000000000"
    assert staff_client.get(URL, {"organization": missing}).status_code == 404


def test_failed_and_needs_reconciliation_aggregates_are_counted_with_links(
    staff_client, org, outsider_org
):
    def aggregate(organization, sequence, status):
        with tenant_context(organization):
            UsageAggregateFactory(organization=organization, sequence=sequence, status=status)

    aggregate(org, 1, "failed")
    aggregate(outsider_org, 1, "failed")
    aggregate(org, 2, "needs_reconciliation")
    aggregate(org, 3, "sent")
    response = staff_client.get(URL)
    attention = {item["label"]: item for item in response.context["attention"]}
    assert attention["Failed usage aggregates"]["count"] == 2
    assert attention["Aggregates needing reconciliation"]["count"] == 1
    link = attention["Failed usage aggregates"]["url"]
    assert link == "/admin/billing/usageaggregate/?status__exact=failed"
    assert staff_client.get(link).context["cl"].result_count == 2
    # the job queue (procrastinate): no failed job yet, with the link to the failed ones
    assert attention["Failed jobs"]["count"] == 0
    jobs = attention["Failed jobs"]["url"]
    assert jobs == "/admin/procrastinate/procrastinatejob/?status__exact=failed"
    assert staff_client.get(jobs).status_code == 200


def _queries(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, params or {}).status_code == 200
    return len(queries)


def _usage_queries(client, url, params=None) -> list[str]:
    """The SQL of the page's reads of organizations, events and the outbox (not the
    session, user and transaction set-up around them)."""
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, params or {}).status_code == 200
    tables = ('"billing_events"', '"billing_usageaggregate"', '"tenancy_organization"')
    return [q["sql"] for q in queries if any(table in q["sql"] for table in tables)]


def test_dashboard_queries_do_not_grow_with_organizations_or_events(staff_client):
    organizations = [OrganizationFactory() for _ in range(2)]
    for organization in organizations:
        seed(organization, day=3)
    params = {"month": MONTH_PARAM, "organization": organizations[0].pk}
    few = _queries(staff_client, URL, params)
    for _ in range(6):
        organization = OrganizationFactory(billing_timezone="Europe/Paris")
        seed(organization, day=4, count=3)
        seed(organization, day=5, route="/api/v1/documents/")
    assert _queries(staff_client, URL, params) == few
    reads = _usage_queries(staff_client, URL, params)
    # the chosen organization; per read of events (by organization, by day for all and
    # for one, top routes) the time-zone names then the GROUP BY; the outbox counts
    assert len(reads) == 10, reads
    assert sum("GROUP BY" in sql for sql in reads) == 4


def test_admin_index_links_the_dashboard_and_is_titled(staff_client):
    response = staff_client.get("/admin/")
    html = response.content.decode()
    assert '<a href="/admin/usage/">Usage dashboard</a>' in html
    assert "<title>Goldleaves administration | Goldleaves</title>" in html
    assert '<div id="site-name"><a href="/admin/">Goldleaves administration</a></div>' in html
    assert "<h1>Goldleaves administration</h1>" in html  # the index title
    assert "Django administration" not in html


# --- the organization admin ----------------------------------------------------------------


def test_organization_list_shows_usage_this_period_without_n_plus_one(staff_client):
    first = OrganizationFactory(name="First")
    BillingEventFactory.create_batch(2, organization=first, unit_cost_cents=61725)
    url = "/admin/tenancy/organization/"
    response = staff_client.get(url)
    html = response.content.decode()
    assert "Usage this period" in html
    assert "$1,234.50" in html
    few = _queries(staff_client, url)
    for _ in range(5):
        BillingEventFactory(organization=OrganizationFactory(), unit_cost_cents=3)
    assert _queries(staff_client, url) == few


def test_organization_page_shows_lines_in_currency_and_the_chart(staff_client, org, settings):
    # the plans price the meters as the events do (the summary rates plan meters)
    settings.BILLING_PLANS = flat_prices(
        settings.BILLING_PLANS, {"api.request": "4", "doc.upload": "5"}
    )
    BillingEventFactory.create_batch(3, organization=org, unit_cost_cents=4)
    BillingEventFactory(
        organization=org,
        event_name="doc.upload",
        quantity="21.0000",
        unit="page",
        unit_cost_cents=5,
    )
    response = staff_client.get(f"/admin/tenancy/organization/{org.pk}/change/")
    html = response.content.decode()
    assert "<td>api.request</td><td>3 events</td><td>3</td><td>$0.12</td>" in html
    assert "<td>doc.upload</td><td>1 event</td><td>21</td><td>$1.05</td>" in html
    assert "<strong>$1.17</strong>" in html
    assert "21.0000" not in html and " cents" not in html
    start = selectors.month_start(timezone.now().date())
    assert f'data-points="{days_in(start)}"' in html
    assert 'data-days-with-usage="1"' in html


@pytest.mark.rls_raw
def test_dashboard_reads_every_organization_on_the_admins_cross_tenant_path(client):
    """No cross-tenant wrapper around the test body: with RLS_ENABLED=true the dashboard
    sees both firms only because the admin request runs through ``cross_tenant``."""
    firms = [OrganizationFactory(name=name) for name in ("One", "Two")]
    for cents, firm in zip((100, 250), firms, strict=True):
        with tenant_context(firm):
            seed(firm, day=6, cents=cents)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.get(URL, {"month": MONTH_PARAM})
    assert response.context["totals"] == {"organizations": 2, "count": 2, "cost_cents": 350}
    assert "$3.50" in response.content.decode()
