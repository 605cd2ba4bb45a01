"""``billing.reporting.queue`` and ``POST report-usage/``: queued on the in-process
worker, never run in the request; one report in progress per organization."""

import threading
import time
from datetime import datetime, timedelta

import psycopg
import pytest
import responses
from django.db import connection
from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus, UsageAggregate, UsageAggregateStatus
from billing.reporting import queue as reporting_queue
from billing.reporting import runs
from billing.tests.fakes import METER_URL, FakeStripe
from billing.tests.reporting.scenario import add_events, ident, lock_key, make_report, sent
from core.testing import race_second_behind_first
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.factories import member_of


def test_report_usage_endpoint_access(fake_stripe, customer_org, outsider_api, anon_api, api):
    with tenant_context(customer_org):
        report = MeterReport.objects.create(organization=customer_org, until=timezone.now())
    assert outsider_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 404
    assert anon_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 401
    assert anon_api.post("/api/v1/billing/report-usage/").status_code == 401
    member = bearer_client(member_of(customer_org, role="member"))
    refused = member.post("/api/v1/billing/report-usage/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_forbidden"
    assert api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 200


def test_a_post_returns_the_report_in_progress_instead_of_queuing_another(
    fake_stripe, customer_org, api
):
    """Sequential POSTs in one transaction (on_commit never fires: the report stays
    queued). The concurrent case, which needs the advisory lock, is
    ``test_two_concurrent_posts_queue_one_report``."""
    first = api.post("/api/v1/billing/report-usage/")
    assert (first.status_code, first.json()["status"]) == (202, "queued")
    assert first.json()["started_at"] is None
    again = api.post("/api/v1/billing/report-usage/")
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    assert MeterReport.objects.count() == 1
    # a report left queued for over ABANDONED_AFTER by a dead process is not waited for
    MeterReport.objects.update(created_at=timezone.now() - timedelta(hours=2))
    fresh = api.post("/api/v1/billing/report-usage/")
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]
    # a run in progress (e.g. the hourly command's) is returned as well
    MeterReport.objects.filter(pk=fresh.json()["id"]).update(status=MeterReportStatus.SUCCEEDED)
    running = make_report(customer_org, status=MeterReportStatus.RUNNING)
    during = api.post("/api/v1/billing/report-usage/")
    assert (during.json()["id"], during.json()["status"]) == (str(running.pk), "running")
    assert MeterReport.objects.count() == 3
    assert fake_stripe.requests == []


def test_a_post_judges_a_running_report_by_when_its_run_began(fake_stripe, customer_org, api):
    # queued 3 h ago (it waited behind other organizations' runs), began 5 minutes ago
    waited = make_report(
        customer_org,
        status=MeterReportStatus.RUNNING,
        age=timedelta(hours=3),
        started=timedelta(minutes=5),
    )
    during = api.post("/api/v1/billing/report-usage/")
    assert (during.json()["id"], during.json()["status"]) == (str(waited.pk), "running")
    assert during.json()["started_at"] is not None
    # began 2 h ago: its process stopped (a live run holds the organization's lock)
    MeterReport.objects.filter(pk=waited.pk).update(started_at=timezone.now() - timedelta(hours=2))
    fresh = api.post("/api/v1/billing/report-usage/")
    assert (fresh.json()["status"], fresh.json()["id"] != str(waited.pk)) == ("queued", True)


# These need real commits (the worker reads the report on its own connection).


@pytest.fixture
def worker_idle():
    yield
    reporting_queue.wait_for_queued_reports(timeout=60)


def wait_for_report(api, report_id, *, timeout=30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/billing/report-usage/{report_id}/").json()
        if body["status"] not in (MeterReportStatus.QUEUED, MeterReportStatus.RUNNING):
            return body
        assert time.monotonic() < deadline, f"report still {body['status']} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_report_usage_endpoint_answers_202_before_stripe_does(
    stripe_settings, customer_org, api, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake = FakeStripe()
    called, release, answered = threading.Event(), threading.Event(), threading.Event()

    def slow_stripe(request):
        called.set()
        release.wait(timeout=10)
        try:
            return fake(request)
        finally:
            answered.set()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, METER_URL, callback=slow_stripe)
        try:
            started = time.monotonic()
            response = api.post("/api/v1/billing/report-usage/")
            took = time.monotonic() - started
            assert response.status_code == 202
            assert response.json()["status"] == "queued"
            assert response.json()["started_at"] is None
            report_id = response.json()["id"]
            assert called.wait(timeout=10), "the worker never called Stripe"
            assert not answered.is_set(), "the 202 came only after Stripe answered"
            assert took < 5
            running = api.get(f"/api/v1/billing/report-usage/{report_id}/").json()
            assert running["status"] == "running"
            assert running["started_at"] is not None
        finally:
            release.set()  # also when an assertion failed: the worker must not hang
        done = wait_for_report(api, report_id)
    assert (done["status"], done["aggregates_sent"], done["events_posted"]) == ("succeeded", 1, 1)
    stamps = [datetime.fromisoformat(done[k]) for k in ("created_at", "started_at", "finished_at")]
    assert stamps == sorted(stamps)
    assert fake.requests == [sent(customer_org, "api_requests", 0, "1")]
    with cross_tenant(reason="test assertions"):
        aggregate = UsageAggregate.objects.get()
        assert aggregate.status == UsageAggregateStatus.SENT
        assert str(aggregate.report_id) == report_id


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_error_in_the_worker_fails_the_report_not_the_request(
    fake_stripe, customer_org, api, monkeypatch, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])

    def explode(**kwargs):
        raise RuntimeError("outbox exploded")

    monkeypatch.setattr(runs, "build_aggregates", explode)
    response = api.post("/api/v1/billing/report-usage/")
    assert response.status_code == 202
    done = wait_for_report(api, response.json()["id"])
    assert done["status"] == "failed"
    assert done["detail"] == "RuntimeError: outbox exploded"
    assert done["finished_at"] is not None
    assert fake_stripe.requests == []
    # the worker survived and released the organization's lock: the next run works
    monkeypatch.undo()
    again = api.post("/api/v1/billing/report-usage/")
    assert wait_for_report(api, again.json()["id"])["status"] == "succeeded"
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


@pytest.mark.django_db(transaction=True)
def test_the_worker_takes_the_organization_lock_on_its_own_connection(
    fake_stripe, customer_org, api, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key(customer_org)])
        refused = api.post("/api/v1/billing/report-usage/")
        assert refused.status_code == 202
        done = wait_for_report(api, refused.json()["id"])
        assert done["status"] == "skipped"  # not a failure: the lock's holder does the work
        assert done["detail"].startswith("another usage report for acme-law is running")
        assert done["finished_at"] is not None
        assert fake_stripe.requests == []
    finally:
        other.close()  # releases the lock
    again = api.post("/api/v1/billing/report-usage/")
    assert wait_for_report(api, again.json()["id"])["status"] == "succeeded"
    # and the worker released it after its run (its connection is closed, too)
    probe = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        locked = probe.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(customer_org)])
        assert locked.fetchone()[0] is True
    finally:
        probe.close()


@pytest.mark.django_db(transaction=True)
def test_the_worker_does_not_run_a_report_marked_abandoned_meanwhile(
    fake_stripe, customer_org, worker_idle
):
    """A report that waited in a busy worker and was marked abandoned by another run is
    not run when its turn comes (the worker claims only a ``queued`` report)."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.FAILED)
    reporting_queue._worker.submit(
        reporting_queue._run_queued_report, report.pk, customer_org, None
    ).result(timeout=30)
    assert fake_stripe.requests == []
    with cross_tenant(reason="test assertions"):
        report.refresh_from_db()
        assert report.status == MeterReportStatus.FAILED
        assert not UsageAggregate.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_posts_queue_one_report(fake_stripe, customer_org, worker_idle):
    """A real race on two connections: the first ``queue_report`` runs inside a
    transaction held open after it queued its report (uncommitted, invisible to others);
    the second waits on the transaction-level advisory lock (asserted with
    ``pg_blocking_pids``) until the first commits, then finds that report and returns
    it. Without the lock the second would see no report in progress and queue another."""

    def queue() -> MeterReport:
        with tenant_context(customer_org):
            return reporting_queue.queue_report(organization=customer_org)

    results = race_second_behind_first(queue, queue, what="the second POST")
    assert isinstance(results["first"], MeterReport), results["first"]
    assert isinstance(results["second"], MeterReport), results["second"]
    assert results["second"].pk == results["first"].pk
    with cross_tenant(reason="test assertions"):
        assert list(MeterReport.objects.values_list("pk", flat=True)) == [results["first"].pk]
