"""Usage reporting to Stripe, with HTTP intercepted at stripe-python's client (``responses``
patches the ``requests`` library that ``stripe.RequestsClient`` uses). ``FakeStripe`` records
every request exactly as sent and deduplicates meter events by ``identifier``, as Stripe does.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import reporting
from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.services import record_event
from conftest import bearer_client
from tenancy.context import tenant_context
from tenancy.tests.factories import member_of

METER_URL = "https://api.stripe.com/v1/billing/meter_events"
HOUR = (
    (timezone.now() - timedelta(days=2)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
)


class FakeStripe:
    """Stripe's meter-event endpoint: records requests; counts each identifier once."""

    def __init__(self):
        self.requests: list[dict] = []
        self.counted: dict[str, Decimal] = {}
        self.plan: list = []  # per call: None (ok), an int status, or an exception

    def __call__(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        self.requests.append(
            {
                "event_name": form["event_name"],
                "identifier": form["identifier"],
                "timestamp": int(form["timestamp"]),
                "customer": form["payload[stripe_customer_id]"],
                "value": form["payload[value]"],
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
        )
        action = self.plan.pop(0) if self.plan else None
        if isinstance(action, int):
            return (action, {}, '{"error": {"message": "server error", "type": "api_error"}}')
        # Stripe received it: it counts once per identifier, whatever happens next.
        self.counted.setdefault(form["identifier"], Decimal(form["payload[value]"]))
        if isinstance(action, Exception):
            raise action
        return (200, {}, json.dumps({"object": "billing.meter_event", **form}))

    def identifiers(self):
        return [r["identifier"] for r in self.requests]


@pytest.fixture
def stripe_settings(settings):
    settings.STRIPE_API_KEY = "sk_test_goldleaves"
    settings.STRIPE_METERS = {"api.request": "api_requests", "doc.upload": "documents"}
    settings.STRIPE_MAX_ATTEMPTS = 3
    settings.STRIPE_RETRY_BACKOFF_SECONDS = 0
    return settings


@pytest.fixture
def fake_stripe(stripe_settings):
    fake = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, METER_URL, callback=fake)
        yield fake


@pytest.fixture
def customer_org(org):
    org.stripe_customer_id = "cus_acme"
    org.save(update_fields=["stripe_customer_id"])
    return org


def add_events(org, specs):
    """``specs``: (event_name, hour offset from HOUR, minute, quantity)."""
    with tenant_context(org):
        for i, (name, hours, minute, quantity) in enumerate(specs):
            record_event(
                organization=org,
                event_name=name,
                quantity=Decimal(quantity),
                request_id=f"{name}-{hours}-{minute}-{i}-{timezone.now().timestamp()}",
                created_at=HOUR + timedelta(hours=hours, minutes=minute),
            )


def ident(org, meter, hours, seq=1):
    return reporting.aggregate_identifier(org.pk, meter, HOUR + timedelta(hours=hours), seq)


def test_full_run_sends_one_meter_event_per_org_meter_hour(fake_stripe, customer_org):
    add_events(
        customer_org,
        [
            ("api.request", 0, 5, "1"),
            ("api.request", 0, 50, "1"),
            ("api.request", 1, 10, "1"),
            ("doc.upload", 0, 20, "2.5"),
            ("doc.processed", 0, 30, "7"),  # no Stripe meter: stays pending, never sent
        ],
    )
    result = reporting.report_usage(organization=customer_org)
    ts = int(HOUR.timestamp())
    assert fake_stripe.requests == [
        {
            "event_name": "api_requests",
            "identifier": ident(customer_org, "api_requests", 0),
            "timestamp": ts,
            "customer": "cus_acme",
            "value": "2",
            "idempotency_key": ident(customer_org, "api_requests", 0),
        },
        {
            "event_name": "documents",
            "identifier": ident(customer_org, "documents", 0),
            "timestamp": ts,
            "customer": "cus_acme",
            "value": "2.5",
            "idempotency_key": ident(customer_org, "documents", 0),
        },
        {
            "event_name": "api_requests",
            "identifier": ident(customer_org, "api_requests", 1),
            "timestamp": ts + 3600,
            "customer": "cus_acme",
            "value": "1",
            "idempotency_key": ident(customer_org, "api_requests", 1),
        },
    ]
    report = result.report
    assert (report.status, report.aggregates_sent, report.events_posted) == ("succeeded", 3, 4)
    statuses = dict(BillingEvent.objects.values_list("event_name", "status").distinct())
    assert statuses == {"api.request": 1, "doc.upload": 1, "doc.processed": 0}
    assert set(UsageAggregate.objects.values_list("status", flat=True)) == {"sent"}
    # a second run has nothing to send
    again = reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 3
    assert again.report.aggregates_created == 0


def test_a_500_is_retried_with_the_same_identifier_and_key(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500]
    result = reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.identifiers() == [expected, expected]
    assert {r["idempotency_key"] for r in fake_stripe.requests} == {expected}
    assert fake_stripe.counted == {expected: Decimal("1")}
    assert result.report.status == MeterReportStatus.SUCCEEDED
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts) == ("sent", 2)
    assert BillingEvent.objects.get().status == BillingEventStatus.POSTED


def test_timeout_after_stripe_received_resends_the_same_identifier(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "3")])
    fake_stripe.plan = [requests.exceptions.ReadTimeout("read timed out")]
    reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.identifiers() == [expected, expected]
    assert [r["idempotency_key"] for r in fake_stripe.requests] == [expected, expected]
    assert fake_stripe.counted == {expected: Decimal("3")}  # counted once at Stripe
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


def test_crash_between_send_and_mark_posted_then_rerun(fake_stripe, customer_org, monkeypatch):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 0, 2, "1")])
    real_acknowledge = reporting._acknowledge

    def crash(aggregate):
        raise SystemExit("process killed after Stripe acknowledged")

    monkeypatch.setattr(reporting, "_acknowledge", crash)
    with pytest.raises(SystemExit):
        reporting.report_usage(organization=customer_org)
    aggregate = UsageAggregate.objects.get()
    assert aggregate.status == UsageAggregateStatus.PENDING  # the outbox row survived
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {0}

    monkeypatch.setattr(reporting, "_acknowledge", real_acknowledge)
    reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.identifiers() == [expected, expected]  # the same identifier again
    assert fake_stripe.counted == {expected: Decimal("2")}  # nothing counted twice
    assert UsageAggregate.objects.count() == 1
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {1}


def test_late_events_for_a_reported_hour_get_the_next_sequence(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    reporting.report_usage(organization=customer_org)
    add_events(customer_org, [("api.request", 0, 59, "1"), ("api.request", 0, 58, "1")])
    reporting.report_usage(organization=customer_org)
    assert fake_stripe.identifiers() == [
        ident(customer_org, "api_requests", 0, 1),
        ident(customer_org, "api_requests", 0, 2),
    ]
    assert [r["value"] for r in fake_stripe.requests] == ["1", "2"]
    assert sum(fake_stripe.counted.values()) == 3  # every event billed, none swallowed


def test_organization_without_stripe_customer_is_skipped_and_reported(fake_stripe, org):
    add_events(org, [("api.request", 0, 1, "1")])
    out = StringIO()
    call_command("report_usage", "--organization", org.slug, stdout=out)
    assert "skipped: no Stripe customer" in out.getvalue()
    assert fake_stripe.requests == []
    assert MeterReport.objects.get().status == MeterReportStatus.SKIPPED
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING


def test_without_api_key_it_is_a_dry_run_that_changes_nothing(stripe_settings, customer_org):
    stripe_settings.STRIPE_API_KEY = ""
    add_events(customer_org, [("api.request", 0, 1, "1"), ("doc.upload", 0, 2, "1")])
    out = StringIO()
    with responses.RequestsMock() as mock:  # any HTTP call would fail the test
        call_command("report_usage", stdout=out)
        assert len(mock.calls) == 0
    text = out.getvalue()
    assert "STRIPE_API_KEY is not set: dry run" in text
    assert f"would send {ident(customer_org, 'api_requests', 0)}" in text
    assert not UsageAggregate.objects.exists()
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {0}
    assert MeterReport.objects.get().status == MeterReportStatus.DRY_RUN


def test_retries_exhausted_fail_visibly_and_the_command_exits_non_zero(
    fake_stripe, customer_org, api
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500, 500, 500]
    with pytest.raises(CommandError, match="had failures"):
        call_command("report_usage", stdout=StringIO(), stderr=StringIO())
    assert len(fake_stripe.requests) == 3  # STRIPE_MAX_ATTEMPTS
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts) == ("failed", 3)
    assert "500" in aggregate.last_error or "server error" in aggregate.last_error
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING
    health = api.get("/api/v1/billing/health/").json()
    assert health["failed_aggregates"] == 1
    assert health["last_report_at"] is not None


def test_hours_older_than_35_days_are_not_sent(fake_stripe, customer_org):
    with tenant_context(customer_org):
        record_event(
            organization=customer_org,
            event_name="api.request",
            request_id="old",
            created_at=timezone.now() - timedelta(days=40),
        )
    result = reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == []
    assert result.report.status == MeterReportStatus.FAILED
    assert "35 days" in UsageAggregate.objects.get().last_error


def test_value_significant_digits():
    assert reporting.format_value(Decimal("12.5000")) == "12.5"
    assert reporting.format_value(Decimal("100")) == "100"
    assert reporting.format_value(Decimal("123456789012345")) == "123456789012345"
    with pytest.raises(ValueError, match="15"):
        reporting.format_value(Decimal("1234567890123.456"))


def test_report_usage_endpoint(fake_stripe, customer_org, api, django_capture_on_commit_callbacks):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/billing/report-usage/")
    assert response.status_code == 202
    report_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    detail = api.get(f"/api/v1/billing/report-usage/{report_id}/")
    assert detail.status_code == 200
    assert detail.json()["status"] == "succeeded"
    assert detail.json()["aggregates_sent"] == 1
    assert len(fake_stripe.requests) == 1


def test_report_usage_endpoint_access(fake_stripe, customer_org, outsider_api, anon_api, api):
    with tenant_context(customer_org):
        report = MeterReport.objects.create(organization=customer_org, until=timezone.now())
    assert outsider_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 404
    assert anon_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 401
    assert anon_api.post("/api/v1/billing/report-usage/").status_code == 401
    member = bearer_client(member_of(customer_org, role="member"))
    refused = member.post("/api/v1/billing/report-usage/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "not_owner"
    assert api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 200


def test_until_bounds_the_events_reported(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 3, 1, "1")])
    until = (HOUR + timedelta(hours=1)).isoformat()
    call_command("report_usage", "--until", until, stdout=StringIO())
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("report_usage", "--until", "yesterday", stdout=StringIO())


def test_timestamps_are_utc_hours(customer_org):
    assert reporting.current_hour(datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC)) == datetime(
        2026, 3, 1, 10, tzinfo=UTC
    )


def test_admin_lists_the_outbox_and_retries_failed_aggregates(customer_org, client):
    from tenancy.models import User

    with tenant_context(customer_org):
        failed = UsageAggregate.objects.create(
            organization=customer_org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            value=1,
            identifier=ident(customer_org, "api_requests", 0),
            status=UsageAggregateStatus.FAILED,
            attempts=3,
        )
    admin_user = User.objects.create_superuser(email="staff@goldleaves.test", password="pw-123456")
    client.force_login(admin_user)
    listing = client.get("/admin/billing/usageaggregate/?status=failed")
    assert listing.status_code == 200
    assert failed.identifier in listing.content.decode()
    assert client.get("/admin/billing/meterreport/").status_code == 200
    response = client.post(
        "/admin/billing/usageaggregate/",
        {"action": "retry_failed", "_selected_action": [str(failed.pk)]},
    )
    assert response.status_code == 302
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("pending", 0)
    # a single aggregate's page is read-only
    page = client.get(f"/admin/billing/usageaggregate/{failed.pk}/change/")
    assert page.status_code == 200
    assert 'name="value"' not in page.content.decode()


def test_a_second_run_for_the_same_organization_is_refused_while_one_runs(
    fake_stripe, customer_org
):
    import hashlib

    import psycopg
    from django.db import connection

    add_events(customer_org, [("api.request", 0, 1, "1")])
    key = int(hashlib.sha256(f"usage-report:{customer_org.pk}".encode()).hexdigest()[:15], 16)
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [key])  # another run holds the lock
        with pytest.raises(reporting.ReportingError, match="another usage report"):
            reporting.report_usage(organization=customer_org)
        assert fake_stripe.requests == []
        refused = MeterReport.objects.get()
        assert refused.status == MeterReportStatus.FAILED
        assert "another usage report" in refused.detail
        other.execute("SELECT pg_advisory_unlock(%s)", [key])
    finally:
        other.close()
    reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 1
