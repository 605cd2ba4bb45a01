"""The hourly usage-report schedule (``billing.tasks.schedule_usage_reports``): one report
job per organization with pending usage, and nothing more while one is waiting or
running."""

from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateJob

from billing.models import BillingEventStatus, MeterReport, UsageAggregate
from billing.services import event_record
from billing.tasks import schedule_usage_reports
from billing.tests.reporting.scenario import HOUR, add_events
from tenancy.context import tenant_context
from tenancy.tests.factories import OrganizationFactory
from tenancy.tests.jobs import ManualWorker


def report_jobs_by_organization() -> dict[str, list]:
    jobs: dict[str, list] = {}
    for job in ProcrastinateJob.objects.filter(task_name="billing.report_usage").order_by("id"):
        jobs.setdefault(job.args["organization_id"], []).append(job)
    return jobs


def test_one_report_job_per_organization_with_pending_usage_and_no_second_while_one_runs(
    stripe_settings, customer_org
):
    def org(slug, customer="cus_x"):
        return OrganizationFactory(slug=slug, stripe_customer_id=customer)

    add_events(customer_org, [("api.request", 0, 1, "1")])  # pending, metered, a past hour
    uploads = org("uploads")
    add_events(uploads, [("doc.upload", 1, 5, "2")])
    outbox_only = org("outbox-only")  # no pending event, but an outbox row still to send
    with tenant_context(outbox_only):
        UsageAggregate.objects.create(
            organization=outbox_only,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            sequence=1,
            value=1,
            identifier=f"gl-{outbox_only.pk}-api_requests-1",
        )
    no_customer = org("no-customer", customer="")
    add_events(no_customer, [("api.request", 0, 1, "1")])
    unmetered = org("unmetered")  # doc.processed has no meter in these settings
    add_events(unmetered, [("doc.processed", 0, 1, "3")])
    this_hour = org("this-hour")  # the current hour is not complete yet
    with tenant_context(this_hour):
        event_record(organization=this_hour, event_name="api.request", request_id="now-1")
    posted = org("posted")
    add_events(posted, [("api.request", 0, 1, "1")])
    with tenant_context(posted):
        posted.billing_events.update(status=BillingEventStatus.POSTED)
    org("idle")

    assert schedule_usage_reports(timestamp=int(timezone.now().timestamp())) == 3
    jobs = report_jobs_by_organization()
    expected = {str(o.pk) for o in (customer_org, uploads, outbox_only)}
    assert set(jobs) == expected
    for organization_id, [job] in jobs.items():
        report = MeterReport.objects.get(pk=job.args["report_id"])
        assert (str(report.organization_id), report.status) == (organization_id, "queued")
        assert report.requested_by is None
        assert (job.lock, job.queueing_lock) == (f"usage-report:{organization_id}",) * 2

    # the next tick while they wait: nothing more
    assert schedule_usage_reports(timestamp=int(timezone.now().timestamp()) + 3600) == 0
    # and while one runs (taken by a worker, still in progress): nothing more either
    worker = ManualWorker()
    running = worker.take(["billing"])
    assert running.task_name == "billing.report_usage"
    assert schedule_usage_reports(timestamp=int(timezone.now().timestamp()) + 7200) == 0
    assert {k: len(v) for k, v in report_jobs_by_organization().items()} == dict.fromkeys(
        expected, 1
    )
    assert MeterReport.objects.count() == 3
    # once it has finished, the organization can be scheduled again
    worker.finish(running)
    assert schedule_usage_reports(timestamp=int(timezone.now().timestamp()) + 10800) == 1


def test_the_schedule_is_hourly_a_few_minutes_past_with_no_cron():
    app.perform_import_paths()
    schedule = {t.task.name: t for t in app.periodic_registry.periodic_tasks.values()}
    assert schedule["billing.schedule_usage_reports"].cron == "5 * * * *"
    assert app.tasks["billing.schedule_usage_reports"].queue == "billing"
    assert app.tasks["billing.report_usage"].queue == "billing"


def test_an_organization_without_pending_usage_gets_no_report(stripe_settings, customer_org):
    assert schedule_usage_reports(timestamp=0) == 0
    assert not ProcrastinateJob.objects.exists()
    assert not MeterReport.objects.exists()
