"""``billing.reporting.queue`` and ``POST report-usage/``: a report run is a job
(``billing.report_usage``) deferred with its report, run by a job worker, never in the
request; one report in progress per organization, and never two runs of one at once."""

from datetime import datetime
from types import SimpleNamespace

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateJob
from procrastinate.jobs import Status

from billing.models import MeterReport, MeterReportStatus, UsageAggregate, UsageAggregateStatus
from billing.reporting import queue as reporting_queue
from billing.reporting import runs
from billing.tasks import defer_report, report_lock
from billing.tests.reporting.scenario import add_events, ident, lock_key, make_report, sent
from core.testing import race_second_behind_first
from goldleaves.housekeeping import retry_stalled_jobs
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.factories import OrganizationFactory, member_of
from tenancy.tests.jobs import ManualWorker, make_jobs_due, run_jobs


def report_jobs():
    return ProcrastinateJob.objects.filter(task_name="billing.report_usage").order_by("id")


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
    assert not report_jobs().exists()


def test_a_post_defers_a_job_and_returns_the_report_in_progress_instead_of_another(
    fake_stripe, customer_org, api
):
    first = api.post("/api/v1/billing/report-usage/")
    assert (first.status_code, first.json()["status"]) == (202, "queued")
    assert first.json()["started_at"] is None
    job = report_jobs().get()
    lock = report_lock(customer_org.pk)
    assert (job.status, job.queue_name, job.lock, job.queueing_lock) == (
        "todo",
        "billing",
        lock,
        lock,
    )
    assert job.args == {"organization_id": str(customer_org.pk), "report_id": first.json()["id"]}
    again = api.post("/api/v1/billing/report-usage/")  # its job is waiting
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    worker = ManualWorker()
    taken = worker.take(["billing"])
    during = api.post("/api/v1/billing/report-usage/")  # its job is running
    assert during.json()["id"] == first.json()["id"]
    assert (MeterReport.objects.count(), report_jobs().count()) == (1, 1)
    # a job that ended (here: failed) blocks nothing: the next POST queues a new report
    worker.finish(taken, Status.FAILED)
    fresh = api.post("/api/v1/billing/report-usage/")
    assert (fresh.status_code, fresh.json()["status"]) == (202, "queued")
    assert fresh.json()["id"] != first.json()["id"]
    assert (MeterReport.objects.count(), report_jobs().count()) == (2, 2)
    assert fake_stripe.requests == []  # nothing ran in the requests


def test_the_report_runs_in_its_job_not_in_the_request(fake_stripe, customer_org, api):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    response = api.post("/api/v1/billing/report-usage/")
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    report_id = response.json()["id"]
    assert fake_stripe.requests == []  # the request never calls Stripe
    ran = run_jobs(queues=["billing"])
    assert [(r.job.task_name, r.outcome, r.result) for r in ran] == [
        ("billing.report_usage", "succeeded", "succeeded")
    ]
    done = api.get(f"/api/v1/billing/report-usage/{report_id}/").json()
    assert (done["status"], done["aggregates_sent"], done["events_posted"]) == ("succeeded", 1, 1)
    stamps = [datetime.fromisoformat(done[k]) for k in ("created_at", "started_at", "finished_at")]
    assert stamps == sorted(stamps)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "1")]
    aggregate = UsageAggregate.objects.get()
    assert aggregate.status == UsageAggregateStatus.SENT
    assert str(aggregate.report_id) == report_id


def test_an_unexpected_error_in_the_job_fails_the_report_not_the_request(
    fake_stripe, customer_org, api, monkeypatch
):
    add_events(customer_org, [("api.request", 0, 1, "1")])

    def explode(**kwargs):
        raise RuntimeError("outbox exploded")

    monkeypatch.setattr(runs, "aggregates_build", explode)
    response = api.post("/api/v1/billing/report-usage/")
    assert response.status_code == 202
    ran = run_jobs(queues=["billing"])
    assert [r.outcome for r in ran] == ["failed"]  # not retried: the next run does the work
    assert isinstance(ran[0].error, RuntimeError)
    done = api.get(f"/api/v1/billing/report-usage/{response.json()['id']}/").json()
    assert done["status"] == "failed"
    assert done["detail"] == "RuntimeError: outbox exploded"
    assert done["finished_at"] is not None
    assert fake_stripe.requests == []
    # the organization's lock was released: the next run works
    monkeypatch.undo()
    again = api.post("/api/v1/billing/report-usage/")
    assert again.json()["id"] != response.json()["id"]
    assert [r.result for r in run_jobs(queues=["billing"])] == ["succeeded"]
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


def test_a_job_whose_report_already_ended_does_nothing(fake_stripe, customer_org):
    """A job run again after its report ended (e.g. a stalled job whose run had finished)
    claims nothing: the run claims only a queued report or its own running one."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.FAILED)
    defer_report(organization=customer_org, report_id=report.pk)
    assert [(r.outcome, r.result) for r in run_jobs(queues=["billing"])] == [
        ("succeeded", "failed")
    ]
    assert fake_stripe.requests == []
    report.refresh_from_db()
    assert report.status == MeterReportStatus.FAILED
    assert not UsageAggregate.objects.exists()


def test_two_report_jobs_of_one_organization_never_run_at_once(fake_stripe, customer_org):
    """The organization's procrastinate lock: while one of its report jobs runs, a second
    one (deferred by hand: ``report_queue`` would not queue it) is not given to any
    worker; another organization's job is."""
    first = make_report(customer_org, status=MeterReportStatus.QUEUED)
    defer_report(organization=customer_org, report_id=first.pk)
    worker = ManualWorker()
    running = worker.take(["billing"])
    assert running.task_kwargs["report_id"] == str(first.pk)
    second = make_report(customer_org, status=MeterReportStatus.QUEUED)
    defer_report(organization=customer_org, report_id=second.pk)
    other_org = OrganizationFactory(slug="other-customer", stripe_customer_id="cus_other")
    other = make_report(other_org, status=MeterReportStatus.QUEUED)
    defer_report(organization=other_org, report_id=other.pk)
    taken = ManualWorker().take(["billing"])
    assert taken.task_kwargs["report_id"] == str(other.pk)  # not the second of customer_org
    assert ManualWorker().take(["billing"]) is None
    worker.finish(running)
    assert ManualWorker().take(["billing"]).task_kwargs["report_id"] == str(second.pk)


def test_a_report_job_whose_worker_died_is_resumed_and_counted_once(
    fake_stripe, customer_org, api, monkeypatch
):
    """The worker dies after Stripe accepted the meter event but before the outbox row was
    acknowledged: the job stays ``doing`` and its report ``running``. The stalled-job
    retry puts it back; its next run resumes the report and resends the same identifier
    and key, which Stripe answers from its saved response: counted once."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report_id = api.post("/api/v1/billing/report-usage/").json()["id"]

    def killed(aggregate):
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs

    monkeypatch.setattr(runs, "acknowledge", killed)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(queues=["billing"])
    monkeypatch.undo()
    assert report_jobs().get().status == "doing"
    assert MeterReport.objects.get(pk=report_id).status == MeterReportStatus.RUNNING

    context = SimpleNamespace(app=app)
    assert async_to_sync(retry_stalled_jobs.func)(context, timestamp=0) == 1  # its worker is gone
    make_jobs_due()  # retried "now", by the clock of this test transaction's future
    ran = run_jobs(queues=["billing"])
    assert [(r.outcome, r.result) for r in ran] == [("succeeded", "succeeded")]
    assert report_jobs().get().attempts == 2
    report = MeterReport.objects.get(pk=report_id)
    assert (report.status, report.aggregates_sent, report.events_posted) == ("succeeded", 1, 1)
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)] * 2
    assert fake_stripe.counted() == {ident(customer_org, "api_requests", 0): 1}


# These need real commits (another connection holds the lock, or races the first).


@pytest.mark.django_db(transaction=True)
def test_a_report_job_that_finds_the_organization_locked_is_skipped(fake_stripe, customer_org, api):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key(customer_org)])
        refused = api.post("/api/v1/billing/report-usage/")
        assert refused.status_code == 202
        assert [r.result for r in run_jobs(queues=["billing"])] == ["skipped"]
        done = api.get(f"/api/v1/billing/report-usage/{refused.json()['id']}/").json()
        assert done["status"] == "skipped"  # not a failure: the lock's holder does the work
        assert done["detail"].startswith("another usage report for acme-law is running")
        assert done["finished_at"] is not None
        assert fake_stripe.requests == []
    finally:
        other.close()  # releases the lock
    again = api.post("/api/v1/billing/report-usage/")
    assert [r.result for r in run_jobs(queues=["billing"])] == ["succeeded"]
    assert api.get(f"/api/v1/billing/report-usage/{again.json()['id']}/").json()["status"] == (
        "succeeded"
    )
    # and the run released it
    probe = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        locked = probe.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(customer_org)])
        assert locked.fetchone()[0] is True
    finally:
        probe.close()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_posts_queue_one_report(fake_stripe, customer_org):
    """A real race on two connections: the first ``report_queue`` runs inside a
    transaction held open after it queued its report and job (uncommitted, invisible to
    others); the second waits on the transaction-level advisory lock (asserted with
    ``pg_blocking_pids``) until the first commits, then finds that report's job and
    returns its report. Without the lock the second would see no job and queue another."""

    def queue():
        with tenant_context(customer_org):
            return reporting_queue.report_queue(organization=customer_org)

    results = race_second_behind_first(queue, queue, what="the second POST")
    assert not isinstance(results["first"], Exception), results["first"]
    assert not isinstance(results["second"], Exception), results["second"]
    (first, created_first), (second, created_second) = results["first"], results["second"]
    assert (created_first, created_second) == (True, False)
    assert second.pk == first.pk
    with cross_tenant(reason="test assertions"):
        assert list(MeterReport.objects.values_list("pk", flat=True)) == [first.pk]
    assert [job.args["report_id"] for job in report_jobs()] == [str(first.pk)]
