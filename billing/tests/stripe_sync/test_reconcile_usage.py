"""``manage.py reconcile_usage``: per organization and meter, local usage against Stripe's
meter event summaries for the month; every difference printed, exit 1 if any, the run
stored for staff."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.models import UsageReconciliation
from billing.services import event_record
from billing.stripe_sync.reconcile import ceil_hour, month_bounds
from tenancy.context import tenant_context
from tenancy.tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def meters(stripe_api, settings):
    settings.STRIPE_METERS = {"api.request": "api_requests", "doc.upload": "documents"}
    stripe_api.meters = {"api_requests": "mtr_api", "documents": "mtr_doc"}
    return stripe_api


def record(org, name, quantity, when):
    with tenant_context(org):
        event_record(
            organization=org,
            event_name=name,
            quantity=Decimal(quantity),
            request_id=f"{name}-{when.isoformat()}-{quantity}",
            created_at=when,
        )


@pytest.fixture
def acme(org):
    org.stripe_customer_id = "cus_acme"
    org.billing_timezone = "America/New_York"
    org.save()
    record(org, "api.request", "7", datetime(2026, 11, 10, 15, 30, tzinfo=UTC))
    record(org, "api.request", "3", datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    record(org, "doc.upload", "2", datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    # outside November in New York (December 1st, 05:00 UTC is 00:00 there)
    record(org, "api.request", "100", datetime(2026, 12, 1, 5, 0, tzinfo=UTC))
    record(org, "api.request", "100", datetime(2026, 11, 1, 3, 59, tzinfo=UTC))
    return org


def test_matching_usage_exits_0_and_is_stored(meters, acme, capsys):
    meters.summaries = {("mtr_api", "cus_acme"): 10, ("mtr_doc", "cus_acme"): 2.0}
    call_command("reconcile_usage", "--period", "2026-11")
    out = capsys.readouterr().out
    assert "acme-law: 0 difference(s)" in out
    assert "Done: 1 organization(s) compared" in out
    summaries = [c for c in meters.calls if c.path.endswith("/event_summaries")]
    start = int(datetime(2026, 11, 1, 4, tzinfo=UTC).timestamp())  # midnight in New York
    end = int(datetime(2026, 12, 1, 5, tzinfo=UTC).timestamp())
    assert [(c.path, c.params) for c in summaries] == [
        (
            f"/v1/billing/meters/{mtr}/event_summaries",
            {
                "customer": "cus_acme",
                "start_time": str(start),
                "end_time": str(end),
                "limit": "100",
            },
        )
        for mtr in ("mtr_api", "mtr_doc")
    ]
    run = UsageReconciliation.objects.get()
    assert (run.period, run.ok, run.organizations_checked, run.differences) == (
        "2026-11",
        True,
        1,
        [],
    )


def test_every_difference_is_printed_and_exits_1(meters, acme, capsys):
    meters.summaries = {("mtr_api", "cus_acme"): 9, ("mtr_doc", "cus_acme"): 5}
    with pytest.raises(CommandError, match="2 difference"):
        call_command("reconcile_usage", "--period", "2026-11", "--organization", "acme-law")
    out = capsys.readouterr().out
    assert "acme-law api.request (api_requests): local 10.0000, Stripe 9" in out
    assert "acme-law doc.upload (documents): local 2.0000, Stripe 5" in out
    run = UsageReconciliation.objects.get()
    assert run.ok is False and run.organization_slug == "acme-law"
    assert [(d["meter"], d["local"], d["stripe"], d["pending_local"]) for d in run.differences] == [
        ("api.request", "10.0000", "9", "10.0000"),
        ("doc.upload", "2.0000", "5", "2.0000"),
    ]


def test_a_meter_missing_in_stripe_is_a_difference_when_used(meters, acme, capsys):
    meters.meters = {"api_requests": "mtr_api"}
    meters.summaries = {("mtr_api", "cus_acme"): 10}
    with pytest.raises(CommandError, match="1 difference"):
        call_command("reconcile_usage", "--period", "2026-11")


def test_organizations_without_a_customer_are_skipped(meters, acme, capsys):
    OrganizationFactory(slug="no-customer")
    meters.summaries = {("mtr_api", "cus_acme"): 10, ("mtr_doc", "cus_acme"): 2}
    call_command("reconcile_usage", "--period", "2026-11")
    assert "no-customer: skipped (no Stripe customer)" in capsys.readouterr().out


def test_stripe_down_exits_1_and_records_it(meters, acme):
    meters.fail_next = [500]
    with pytest.raises(CommandError, match="Stripe failed"):
        call_command("reconcile_usage", "--period", "2026-11")
    run = UsageReconciliation.objects.get()
    assert run.ok is False and run.detail.startswith("Stripe failed")


@pytest.mark.parametrize("period", ["2026-13", "26-11", "2026-1", "november"])
def test_a_bad_period_exits_1(meters, period):
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("reconcile_usage", "--period", period)


def test_an_unknown_organization_and_no_api_key_exit_1(meters, plans):
    with pytest.raises(CommandError, match="No organization"):
        call_command("reconcile_usage", "--organization", "nope")
    plans.STRIPE_API_KEY = ""
    with pytest.raises(CommandError, match="STRIPE_API_KEY is not set"):
        call_command("reconcile_usage")


def test_half_hour_zones_compare_the_hours_stripe_counts(org):
    org.billing_timezone = "Asia/Kolkata"  # UTC+05:30
    start, end = month_bounds(org, datetime(2026, 11, 1).date())
    assert start.astimezone(UTC) == datetime(2026, 10, 31, 18, 30, tzinfo=UTC)
    # an hour bucket starting at 18:00 UTC is before the start for Stripe: not counted
    assert ceil_hour(start) == datetime(2026, 10, 31, 19, 0, tzinfo=UTC)
    assert ceil_hour(datetime(2026, 11, 1, 5, tzinfo=UTC)) == datetime(2026, 11, 1, 5, tzinfo=UTC)
