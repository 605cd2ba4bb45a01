"""``billing.reporting.lifecycle``: a run claims only a queued report (a resumed job also
its own running one), leaves the organization's other reports alone, and never turns a
report that failed meanwhile back."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
)
from billing.reporting import runs
from billing.tests.reporting.scenario import add_events, ident, make_report

#: ``detail`` a test writes on a report that failed while its run was going on (what a
#: concurrent attempt's ``report_fail`` would write).
FAILED_MEANWHILE = "RuntimeError: failed by a concurrent attempt"


def test_a_run_leaves_the_organizations_other_reports_as_they_are(
    fake_stripe, customer_org, outsider_org
):
    """No report is judged "abandoned" by its age any more: a report left ``running`` or
    ``queued`` (its job's worker died, or a killed command) is its job's to resume, and a
    run of the organization leaves it alone."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    old = timedelta(hours=3)
    left_queued = make_report(customer_org, status=MeterReportStatus.QUEUED, age=old)
    left_running = make_report(customer_org, status=MeterReportStatus.RUNNING, age=old)
    other_org = make_report(outsider_org, status=MeterReportStatus.RUNNING, age=old)
    current = make_report(customer_org, status=MeterReportStatus.QUEUED, age=timedelta(hours=3))
    result = runs.report_usage(organization=customer_org, report=current)
    assert result.report.pk == current.pk
    rows = {r.pk: r for r in MeterReport.objects.all()}
    assert rows[left_queued.pk].status == MeterReportStatus.QUEUED
    assert rows[left_running.pk].status == MeterReportStatus.RUNNING
    assert rows[other_org.pk].status == MeterReportStatus.RUNNING
    assert (rows[current.pk].status, rows[current.pk].detail) == ("succeeded", "")
    assert rows[current.pk].started_at > rows[current.pk].created_at + timedelta(hours=2)
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


def test_a_resumed_job_reclaims_its_own_running_report_a_plain_run_does_not(
    fake_stripe, customer_org
):
    """The report of a job whose worker died is ``running``; the job, run again by the
    stalled-job retry, resumes it (``resume=True``) and finishes it. Without ``resume``
    (any other caller) a ``running`` report is not claimed."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.RUNNING, age=timedelta(hours=2))
    assert runs.report_usage(organization=customer_org, report=report).report.status == "running"
    assert fake_stripe.requests == []
    result = runs.report_usage(organization=customer_org, report=report, resume=True)
    assert result.report.status == MeterReportStatus.SUCCEEDED
    report.refresh_from_db()
    assert report.started_at > timezone.now() - timedelta(minutes=1)  # claimed again now
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


def test_a_run_claims_only_a_queued_report(fake_stripe, customer_org, caplog):
    """``report_usage(report=...)`` moves the report ``queued -> running`` by a
    conditional update: a report that failed before its run began (an earlier attempt
    recorded its error) is neither run nor turned back to ``running``."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    MeterReport.objects.filter(pk=report.pk).update(
        status=MeterReportStatus.FAILED, detail=FAILED_MEANWHILE
    )
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == ("failed", FAILED_MEANWHILE)
    report.refresh_from_db()
    assert (report.status, report.started_at) == (MeterReportStatus.FAILED, None)
    assert fake_stripe.requests == []
    assert not UsageAggregate.objects.exists()
    assert any("is no longer queued" in r.getMessage() for r in caplog.records)


def test_a_report_that_failed_while_it_waited_for_the_lock_is_not_run(
    fake_stripe, customer_org, monkeypatch, caplog
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    real_lock = runs.organization_lock

    def lock_after_failing(organization):
        # between the claim (running) and the lock: a concurrent attempt records a failure
        MeterReport.objects.for_organization(customer_org).filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=FAILED_MEANWHILE
        )
        return real_lock(organization)

    monkeypatch.setattr(runs, "organization_lock", lock_after_failing)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == ("failed", FAILED_MEANWHILE)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", FAILED_MEANWHILE)
    assert fake_stripe.requests == []
    assert any(
        "while it waited for the organization's lock" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("stripe_customer", ["cus_acme", ""])
def test_a_report_that_failed_during_its_run_is_not_turned_back(
    fake_stripe, customer_org, monkeypatch, caplog, stripe_customer
):
    """The run ends its report by a conditional update ``running -> <final>``: a report
    marked failed meanwhile keeps that status and detail (the run would have written
    ``succeeded``, or ``skipped`` for an organization without a Stripe customer)."""
    customer_org.stripe_customer_id = stripe_customer
    customer_org.save(update_fields=["stripe_customer_id"])
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)

    def fail_meanwhile():
        MeterReport.objects.for_organization(customer_org).filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=FAILED_MEANWHILE
        )

    real_start, real_send = runs.report_claim, runs.aggregate_send

    def start_then_fail(report, **kwargs):
        claimed = real_start(report, **kwargs)
        if not stripe_customer:  # this path ends at once: fail it right after the claim
            fail_meanwhile()
        return claimed

    def fail_then_send(client, aggregate, **kwargs):
        fail_meanwhile()  # while the run is sending
        return real_send(client, aggregate, **kwargs)

    monkeypatch.setattr(runs, "report_claim", start_then_fail)
    monkeypatch.setattr(runs, "aggregate_send", fail_then_send)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", FAILED_MEANWHILE)
    assert (result.report.status, result.report.detail) == ("failed", FAILED_MEANWHILE)
    assert report.started_at is not None
    warned = [r.getMessage() for r in caplog.records if "not overwritten" in r.getMessage()]
    assert len(warned) == 1
    if stripe_customer:
        assert "not overwritten with succeeded" in warned[0]
        assert "1 sent" in warned[0] and "1 event(s) posted" in warned[0]
        # the work itself was done and acknowledged: Stripe has it once, the event is posted
        assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
        assert BillingEvent.objects.get().status == BillingEventStatus.POSTED
    else:
        assert "not overwritten with skipped" in warned[0]
        assert fake_stripe.requests == []
