"""``billing.reporting.outbox``: events into aggregates (late events, ``until``,
oversized hours split exactly) and the events an aggregate keeps."""

from datetime import timedelta, timezone
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import ProtectedError

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
)
from billing.reporting import runs
from billing.services import events_record
from billing.tests.reporting.scenario import HOUR, add_events, ident, sent
from tenancy.context import tenant_context


def test_late_events_for_a_reported_hour_get_the_next_sequence(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    runs.report_usage(organization=customer_org)
    add_events(customer_org, [("api.request", 0, 59, "1"), ("api.request", 0, 58, "1")])
    runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "1", seq=1),
        sent(customer_org, "api_requests", 0, "2", seq=2),
    ]
    assert fake_stripe.created_identifiers() == [
        ident(customer_org, "api_requests", 0, 1),
        ident(customer_org, "api_requests", 0, 2),
    ]
    assert sum(fake_stripe.counted().values()) == 3  # every event billed, none swallowed


def test_until_bounds_the_events_reported(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 3, 1, "1")])
    until = (HOUR + timedelta(hours=1)).isoformat()
    call_command("report_usage", "--until", until, stdout=StringIO())
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("report_usage", "--until", "yesterday", stdout=StringIO())
    with pytest.raises(CommandError, match="out of range in UTC"):
        call_command("report_usage", "--until", "0001-01-01T00:00:00+23:59", stdout=StringIO())


def test_an_until_with_an_offset_beyond_postgresqls_is_taken_in_utc(fake_stripe, customer_org):
    """PostgreSQL refuses offsets beyond 15:59 (a DataError, once a traceback); ISO 8601
    allows 23:59. The instant is the same in UTC."""
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 3, 1, "1")])
    until = (HOUR + timedelta(hours=1)).astimezone(timezone(timedelta(hours=23, minutes=30)))
    call_command("report_usage", "--until", until.isoformat(), stdout=StringIO())
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
    assert MeterReport.objects.get().until == HOUR + timedelta(hours=1)


def test_deleting_an_aggregate_with_events_is_refused(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    runs.report_usage(organization=customer_org)
    aggregate = UsageAggregate.objects.get()
    with pytest.raises(ProtectedError):
        aggregate.delete()
    assert BillingEvent.objects.get().usage_aggregate_id == aggregate.pk


def test_an_hour_over_15_significant_digits_is_split_exactly(fake_stripe, customer_org):
    """1,001 events of 99,999,999.9999 sum to 100,099,999,999.8999 (16 significant digits,
    which Stripe refuses): sent as two aggregates that each fit, nothing rounded."""
    quantity = Decimal("99999999.9999")
    with tenant_context(customer_org):
        events_record(
            {
                "organization": customer_org,
                "event_name": "api.request",
                "quantity": quantity,
                "created_at": HOUR + timedelta(microseconds=i),
            }
            for i in range(1001)
        )
    result = runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "99999999999.9", seq=1),  # 1,000 events
        sent(customer_org, "api_requests", 0, "99999999.9999", seq=2),  # the last one
    ]
    assert sum(fake_stripe.counted().values()) == quantity * 1001
    assert result.report.status == MeterReportStatus.SUCCEEDED
    assert result.report.aggregates_created == 2
    counts = list(UsageAggregate.objects.order_by("sequence").values_list("event_count", "status"))
    assert counts == [(1000, "sent"), (1, "sent")]
    assert not BillingEvent.objects.filter(status=BillingEventStatus.PENDING).exists()


def test_an_oversized_pending_aggregate_is_split_before_its_first_send(fake_stripe, customer_org):
    """An aggregate left oversized by an earlier version (never sent) is split too."""
    with tenant_context(customer_org):
        events = events_record(
            {
                "organization": customer_org,
                "event_name": "api.request",
                "quantity": Decimal("99999999.9999"),
                "created_at": HOUR + timedelta(microseconds=i),
            }
            for i in range(1001)
        )
        aggregate = UsageAggregate.objects.create(
            organization=customer_org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            value=Decimal("99999999.9999") * 1001,
            event_count=1001,
            identifier=ident(customer_org, "api_requests", 0),
        )
        BillingEvent.objects.for_organization(customer_org).filter(
            pk__in=[e.pk for e in events]
        ).update(usage_aggregate=aggregate)
    runs.report_usage(organization=customer_org)
    assert [r["value"] for r in fake_stripe.requests] == ["99999999999.9", "99999999.9999"]
    assert not BillingEvent.objects.filter(status=BillingEventStatus.PENDING).exists()
