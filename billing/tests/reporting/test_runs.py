"""``billing.reporting.runs``: a whole run (one meter event per organization, meter
and hour), a crash between sending and acknowledging, organizations without a Stripe
customer, the dry run, and an error in one organization."""

import logging
from decimal import Decimal
from io import StringIO

import pytest
import responses
from django.core.management import CommandError, call_command
from django.db import connection

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.reporting import runs
from billing.tests.reporting.scenario import add_events, ident, sent


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
    result = runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "2"),
        sent(customer_org, "documents", 0, "2.5"),
        sent(customer_org, "api_requests", 1, "1"),
    ]
    created = fake_stripe.created_identifiers()
    assert len(created) == len(set(created)) == 3  # three creates, three distinct identifiers
    assert fake_stripe.counted() == {
        ident(customer_org, "api_requests", 0): Decimal("2"),
        ident(customer_org, "documents", 0): Decimal("2.5"),
        ident(customer_org, "api_requests", 1): Decimal("1"),
    }
    report = result.report
    assert (report.status, report.aggregates_sent, report.events_posted) == ("succeeded", 3, 4)
    statuses = dict(BillingEvent.objects.values_list("event_name", "status").distinct())
    assert statuses == {"api.request": 1, "doc.upload": 1, "doc.processed": 0}
    assert set(UsageAggregate.objects.values_list("status", flat=True)) == {"sent"}
    assert not UsageAggregate.objects.filter(first_sent_at=None).exists()
    # a second run has nothing to send
    again = runs.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 3
    assert again.report.aggregates_created == 0


def test_crash_between_send_and_mark_posted_then_rerun(fake_stripe, customer_org, monkeypatch):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 0, 2, "1")])
    real_acknowledge = runs.acknowledge

    def crash(aggregate):
        raise SystemExit("process killed after Stripe acknowledged")

    monkeypatch.setattr(runs, "acknowledge", crash)
    with pytest.raises(SystemExit):
        runs.report_usage(organization=customer_org)
    aggregate = UsageAggregate.objects.get()
    assert aggregate.status == UsageAggregateStatus.PENDING  # the outbox row survived
    assert aggregate.first_sent_at is not None  # committed before the request left
    first_sent_at = aggregate.first_sent_at
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {0}

    monkeypatch.setattr(runs, "acknowledge", real_acknowledge)
    runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    # the same identifier and key again: Stripe replays its first answer
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "2")] * 2
    assert fake_stripe.created_identifiers() == [expected]  # one create: nothing counted twice
    assert fake_stripe.counted() == {expected: Decimal("2")}
    assert UsageAggregate.objects.count() == 1
    assert UsageAggregate.objects.get().first_sent_at == first_sent_at
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {1}


def test_organization_without_stripe_customer_is_skipped_and_reported(fake_stripe, org):
    add_events(org, [("api.request", 0, 1, "1")])
    out = StringIO()
    call_command("report_usage", "--organization", org.slug, stdout=out)
    assert (
        f"Skipped 1 organization(s) without a Stripe customer (stripe_customer_id): {org.slug} "
        "(--verbose lists each)."
    ) in out.getvalue()
    assert "[1]" not in out.getvalue()
    verbose = StringIO()
    call_command("report_usage", "--organization", org.slug, "--verbose", stdout=verbose)
    assert f"[1] {org.slug}: skipped: no Stripe customer" in verbose.getvalue()
    assert "Skipped 1 organization" not in verbose.getvalue()
    assert fake_stripe.requests == []
    assert set(MeterReport.objects.values_list("status", flat=True)) == {MeterReportStatus.SKIPPED}
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING


def test_many_organizations_without_a_customer_make_one_summary_line(fake_stripe, db):
    from tenancy.tests.factories import OrganizationFactory

    for n in range(8):
        OrganizationFactory(slug=f"no-customer-{n}")
    out = StringIO()
    call_command("report_usage", stdout=out)
    lines = out.getvalue().splitlines()
    assert not any("skipped: no Stripe customer" in line for line in lines)
    summary = [line for line in lines if line.startswith("Skipped ")]
    assert summary == [
        "Skipped 8 organization(s) without a Stripe customer (stripe_customer_id): "
        "no-customer-0, no-customer-1, no-customer-2, no-customer-3, no-customer-4 and 3 more "
        "(--verbose lists each)."
    ]
    assert (
        lines[-1].startswith("Done: 0 meter event(s) sent")
        and "8 organization(s) skipped" in lines[-1]
    )


def test_a_future_until_is_capped_at_now_and_said_so(fake_stripe, db):
    out = StringIO()
    call_command("report_usage", "--until", "2999-01-01T00:00:00Z", stdout=out)
    first = out.getvalue().splitlines()[0]
    assert first.startswith("--until 2999-01-01T00:00:00+00:00 is in the future: capped at now, ")
    assert first.endswith("(Stripe refuses meter events with future timestamps).")
    past = StringIO()
    call_command("report_usage", "--until", "2020-01-01T00:00:00Z", stdout=past)
    assert "capped" not in past.getvalue()


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


def test_an_error_in_one_organization_does_not_stop_the_others(
    fake_stripe, customer_org, outsider_org, monkeypatch, caplog
):
    outsider_org.stripe_customer_id = "cus_other"
    outsider_org.save(update_fields=["stripe_customer_id"])
    add_events(customer_org, [("api.request", 0, 1, "1")])
    add_events(outsider_org, [("api.request", 0, 1, "1")])
    real_build = runs.aggregates_build

    def build(*, organization, **kwargs):
        if organization.pk == customer_org.pk:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")  # a real database error, for acme-law only
        return real_build(organization=organization, **kwargs)

    monkeypatch.setattr(runs, "aggregates_build", build)
    out, err = StringIO(), StringIO()
    with caplog.at_level(logging.ERROR, logger="billing.reporting"):
        with pytest.raises(CommandError, match="1 organization"):
            call_command("report_usage", stdout=out, stderr=err)
    # acme-law (first by slug) failed; other-firm was still reported
    assert fake_stripe.identifiers() == [ident(outsider_org, "api_requests", 0)]
    assert "[1] acme-law: FAILED: DataError: division by zero" in err.getvalue()
    assert "Done: 1 meter event(s) sent" in out.getvalue()
    reports = dict(MeterReport.objects.values_list("organization__slug", "status"))
    assert reports == {"acme-law": "failed", "other-firm": "succeeded"}
    assert MeterReport.objects.get(organization=customer_org).detail.startswith("DataError")
    logged = [
        r for r in caplog.records if r.levelno == logging.ERROR and "acme-law" in r.getMessage()
    ]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback
