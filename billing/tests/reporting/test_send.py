"""``billing.reporting.send``: resends after a timeout (same identifier, same key),
retries exhausted, and hours Stripe no longer accepts."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import requests
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.reporting import runs
from billing.services import event_record
from billing.tests.fakes import Lost
from billing.tests.reporting.scenario import add_events, ident, sent
from tenancy.context import tenant_context


def test_timeout_after_stripe_received_resends_the_same_identifier_and_key(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "3")])
    fake_stripe.plan = [requests.exceptions.ReadTimeout("read timed out")]
    runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "3")] * 2
    assert fake_stripe.created_identifiers() == [expected]  # the resend was a replay
    assert fake_stripe.counted() == {expected: Decimal("3")}
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("sent", 2, 0)


def test_timeout_before_stripe_received_resends_the_same_identifier_and_key(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "3")])
    fake_stripe.plan = [Lost(requests.exceptions.ConnectTimeout("connect timed out"))]
    runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "3")] * 2
    assert fake_stripe.created_identifiers() == [expected]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


def test_retries_exhausted_fail_visibly_and_the_command_exits_non_zero(
    fake_stripe, customer_org, api
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500, 500, 500]
    with pytest.raises(CommandError, match="had failures"):
        call_command("report_usage", stdout=StringIO(), stderr=StringIO())
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.keys() == [expected, f"{expected}-r1", f"{expected}-r2"]
    assert fake_stripe.creates == []
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("failed", 3, 3)
    assert "planned 500" in aggregate.last_error
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING
    health = api.get("/api/v1/billing/health/").json()
    assert health["failed_aggregates"] == 1
    assert health["last_report_at"] is not None


def test_hours_older_than_35_days_are_not_sent(fake_stripe, customer_org):
    with tenant_context(customer_org):
        event_record(
            organization=customer_org,
            event_name="api.request",
            request_id="old",
            created_at=timezone.now() - timedelta(days=40),
        )
    result = runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == []
    assert result.report.status == MeterReportStatus.FAILED
    assert "35 days" in UsageAggregate.objects.get().last_error
