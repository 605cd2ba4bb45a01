"""``billing.reporting.reconciliation``: an aggregate first sent past the resend window
is flagged, never resent; the window is a setting."""

from datetime import timedelta
from io import StringIO

import pytest
import requests
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import BillingEvent, BillingEventStatus, UsageAggregate, UsageAggregateStatus
from billing.reporting import outbox, runs
from billing.tests.fakes import Lost
from billing.tests.reporting.scenario import add_events, ident
from tenancy.context import tenant_context


def test_an_aggregate_first_sent_past_the_window_is_not_resent(fake_stripe, customer_org, api):
    """Stripe deduplicates identifiers and replays keys for ~24 h only: past
    STRIPE_RESEND_WINDOW_HOURS (23) a pending aggregate is flagged, never resent."""
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 1, 1, "1")])
    fake_stripe.plan = [Lost(requests.exceptions.ConnectTimeout("down"))] * 3 * 2
    runs.report_usage(organization=customer_org)  # both fail 3 times
    assert len(fake_stripe.requests) == 6
    now = timezone.now()
    old, recent = UsageAggregate.objects.order_by("period_start")
    # both queued again; one was first sent 23 h 1 min ago, the other 22 h ago
    UsageAggregate.objects.filter(pk=old.pk).update(
        first_sent_at=now - timedelta(hours=23, minutes=1)
    )
    UsageAggregate.objects.filter(pk=recent.pk).update(first_sent_at=now - timedelta(hours=22))
    UsageAggregate.objects.update(status=UsageAggregateStatus.PENDING, attempts=0)

    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="had failures"):
        call_command("report_usage", stdout=out, stderr=err)
    assert fake_stripe.identifiers()[6:] == [ident(customer_org, "api_requests", 1)]  # only one
    old.refresh_from_db()
    recent.refresh_from_db()
    assert (old.status, recent.status) == ("needs_reconciliation", "sent")
    assert "Reconcile against Stripe's meter event summaries" in old.last_error
    assert f"NEEDS RECONCILIATION {old.identifier}" in out.getvalue()
    assert BillingEvent.objects.get(usage_aggregate=old).status == BillingEventStatus.PENDING
    health = api.get("/api/v1/billing/health/").json()
    assert (health["reconciliation_aggregates"], health["failed_aggregates"]) == (1, 0)
    # and no later run sends it either
    runs.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 7


def test_the_window_is_a_setting(fake_stripe, stripe_settings, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    with tenant_context(customer_org):
        outbox.aggregates_build(organization=customer_org, until=timezone.now(), report=None)
    UsageAggregate.objects.update(first_sent_at=timezone.now() - timedelta(hours=2))
    stripe_settings.STRIPE_RESEND_WINDOW_HOURS = 1
    runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == []
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.NEEDS_RECONCILIATION
