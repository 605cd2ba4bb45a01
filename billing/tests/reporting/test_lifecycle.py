"""``billing.reporting.lifecycle``: a run claims only a queued report, marks the
organization's abandoned reports failed, and never turns a report marked abandoned
back."""

import logging
from datetime import timedelta

import pytest

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
)
from billing.reporting import lifecycle, runs
from billing.tests.reporting.scenario import add_events, ident, make_report


def test_a_run_marks_the_organizations_abandoned_reports_failed(
    fake_stripe, customer_org, outsider_org
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    old = timedelta(hours=1, minutes=1)
    stale_queued = make_report(customer_org, status=MeterReportStatus.QUEUED, age=old)
    stale_running = make_report(customer_org, status=MeterReportStatus.RUNNING, age=old)
    # queued long ago, but its run began 59 minutes ago: not stale (judged by started_at)
    waited = make_report(
        customer_org,
        status=MeterReportStatus.RUNNING,
        age=timedelta(hours=3),
        started=timedelta(minutes=59),
    )
    # a row from before migration 0009 (no started_at): judged by created_at
    legacy = make_report(customer_org, status=MeterReportStatus.RUNNING, age=old)
    MeterReport.objects.filter(pk=legacy.pk).update(started_at=None)
    recent = make_report(customer_org, status=MeterReportStatus.QUEUED, age=timedelta(minutes=59))
    finished = make_report(customer_org, status=MeterReportStatus.SUCCEEDED, age=old)
    other_org = make_report(outsider_org, status=MeterReportStatus.RUNNING, age=old)
    # the report being run is old too (it waited in a busy worker): it is not touched
    current = make_report(customer_org, status=MeterReportStatus.QUEUED, age=timedelta(hours=3))
    result = runs.report_usage(organization=customer_org, report=current)
    assert result.report.pk == current.pk
    assert "marked 3 abandoned report(s) failed" in result.lines
    rows = {r.pk: r for r in MeterReport.objects.all()}
    for abandoned in (stale_running, legacy):
        assert rows[abandoned.pk].status == MeterReportStatus.FAILED
        assert rows[abandoned.pk].detail == "abandoned: the process running it stopped"
        assert rows[abandoned.pk].finished_at is not None
    # a queued one may only be waiting in a busy worker: the detail does not say it stopped
    assert rows[stale_queued.pk].status == MeterReportStatus.FAILED
    assert rows[stale_queued.pk].detail == (
        "abandoned: still queued after 1 hour (its process stopped, or its worker was busy); "
        f"run {current.pk} reported the organization's pending usage instead"
    )
    assert rows[stale_queued.pk].finished_at is not None
    assert rows[waited.pk].status == MeterReportStatus.RUNNING
    assert rows[recent.pk].status == MeterReportStatus.QUEUED
    assert rows[finished.pk].status == MeterReportStatus.SUCCEEDED
    assert rows[other_org.pk].status == MeterReportStatus.RUNNING
    assert (rows[current.pk].status, rows[current.pk].detail) == ("succeeded", "")
    assert rows[current.pk].started_at > rows[current.pk].created_at + timedelta(hours=2)
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


def test_a_run_claims_only_a_queued_report(fake_stripe, customer_org, caplog):
    """``report_usage(report=...)`` moves the report ``queued -> running`` by a
    conditional update: a report marked abandoned (failed) before its run began is
    neither run nor turned back to ``running``."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    MeterReport.objects.filter(pk=report.pk).update(
        status=MeterReportStatus.FAILED, detail="abandoned: marked by another run"
    )
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == (
        "failed",
        "abandoned: marked by another run",
    )
    report.refresh_from_db()
    assert (report.status, report.started_at) == (MeterReportStatus.FAILED, None)
    assert fake_stripe.requests == []
    assert not UsageAggregate.objects.exists()
    assert any("is no longer queued" in r.getMessage() for r in caplog.records)


def test_a_report_abandoned_while_it_waited_for_the_lock_is_not_run(
    fake_stripe, customer_org, monkeypatch, caplog
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    real_lock = runs.organization_lock

    def lock_after_being_abandoned(organization):
        # between the claim (running) and the lock: another run marks it abandoned
        MeterReport.objects.filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=lifecycle.ABANDONED_DETAIL
        )
        return real_lock(organization)

    monkeypatch.setattr(runs, "organization_lock", lock_after_being_abandoned)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == ("failed", lifecycle.ABANDONED_DETAIL)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", lifecycle.ABANDONED_DETAIL)
    assert fake_stripe.requests == []
    assert any(
        "while it waited for the organization's lock" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("stripe_customer", ["cus_acme", ""])
def test_a_report_abandoned_during_its_run_is_not_turned_back(
    fake_stripe, customer_org, monkeypatch, caplog, stripe_customer
):
    """The run ends its report by a conditional update ``running -> <final>``: a report
    marked failed meanwhile keeps that status and detail (the run would have written
    ``succeeded``, or ``skipped`` for an organization without a Stripe customer)."""
    customer_org.stripe_customer_id = stripe_customer
    customer_org.save(update_fields=["stripe_customer_id"])
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)

    def abandon():
        MeterReport.objects.filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=lifecycle.ABANDONED_DETAIL
        )

    real_start, real_send = runs.claim_report, runs.send_aggregate

    def start_then_abandon(report, **kwargs):
        claimed = real_start(report, **kwargs)
        if not stripe_customer:  # this path ends at once: abandon it right after the claim
            abandon()
        return claimed

    def abandon_then_send(client, aggregate, **kwargs):
        abandon()  # while the run is sending
        return real_send(client, aggregate, **kwargs)

    monkeypatch.setattr(runs, "claim_report", start_then_abandon)
    monkeypatch.setattr(runs, "send_aggregate", abandon_then_send)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = runs.report_usage(organization=customer_org, report=report)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", lifecycle.ABANDONED_DETAIL)
    assert (result.report.status, result.report.detail) == ("failed", lifecycle.ABANDONED_DETAIL)
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
