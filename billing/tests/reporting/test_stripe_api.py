"""``billing.reporting.stripe_api``: what each Stripe error answer means (new key after
a 5xx, the same key after a 409 or 429, ``Stripe-Should-Retry``, errors never retried),
as a run acts on it; and the fidelity of ``FakeStripe`` that these tests rely on."""

import logging
from decimal import Decimal

import pytest
import stripe

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.reporting import runs, stripe_api
from billing.tests.fakes import Fail
from billing.tests.reporting.scenario import HOUR, add_events, ident, sent


def test_a_500_is_retried_with_the_same_identifier_and_a_new_key(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500]
    result = runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    # Stripe saved the 500 under the first key: the same key would only replay it.
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "1"),
        sent(customer_org, "api_requests", 0, "1", key=f"{expected}-r1"),
    ]
    assert fake_stripe.created_identifiers() == [expected]  # one create in all
    assert fake_stripe.counted() == {expected: Decimal("1")}
    assert result.report.status == MeterReportStatus.SUCCEEDED
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("sent", 2, 1)
    assert BillingEvent.objects.get().status == BillingEventStatus.POSTED


def test_fake_stripe_replays_a_saved_500_for_the_same_key(fake_stripe, customer_org):
    """A test of FakeStripe's fidelity, not of our code: like Stripe, it saves a 500 under
    its Idempotency-Key and replays it for that key, creating nothing, while a new key is
    processed. The 5xx tests of this module and ``test_send.py`` rely on exactly this (it
    is why a retry after a 5xx needs a new key), so a fake that stopped replaying would
    make them pass for the wrong reason."""
    fake_stripe.plan = [500]
    client = stripe_api.stripe_client()
    params = {
        "event_name": "api_requests",
        "identifier": "gl-x",
        "timestamp": int(HOUR.timestamp()),
        "payload": {"stripe_customer_id": "cus_acme", "value": "1"},
    }
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k"})
    assert fake_stripe.creates == []
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k2"})
    assert fake_stripe.created_identifiers() == ["gl-x"]


def test_a_500_after_stripe_recorded_the_event_is_counted_once(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "4")])
    fake_stripe.plan = [Fail(500, recorded=True)]
    result = runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "4"),
        sent(customer_org, "api_requests", 0, "4", key=f"{expected}-r1"),
    ]
    # the new key reached Stripe as a second create of the identifier: Stripe refused it
    assert fake_stripe.creates == [
        {"identifier": expected, "value": "4", "duplicate": False},
        {"identifier": expected, "value": "4", "duplicate": True},
    ]
    assert fake_stripe.counted() == {expected: Decimal("4")}
    # ... which proves Stripe has it: acknowledged, events posted
    assert result.report.status == MeterReportStatus.SUCCEEDED
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT
    assert BillingEvent.objects.get().status == BillingEventStatus.POSTED


@pytest.mark.parametrize("status", [409, 429])
def test_conflict_and_rate_limit_retry_with_the_same_key(fake_stripe, customer_org, status):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [status]
    runs.report_usage(organization=customer_org)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "1")] * 2
    assert fake_stripe.created_identifiers() == [ident(customer_org, "api_requests", 0)]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


def test_stripe_should_retry_false_is_obeyed(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [Fail(500, headers={"Stripe-Should-Retry": "false"})]
    result = runs.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "1")]  # no retry
    assert result.report.status == MeterReportStatus.FAILED
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("failed", 1, 1)
    # queued again (the admin's retry): the next run uses the new key, not the saved 500
    UsageAggregate.objects.filter(pk=aggregate.pk).update(
        status=UsageAggregateStatus.PENDING, attempts=0, next_attempt_at=None
    )
    runs.report_usage(organization=customer_org)
    assert fake_stripe.keys() == [expected, f"{expected}-r1"]
    assert fake_stripe.created_identifiers() == [expected]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


@pytest.mark.parametrize(
    ("error_type", "exception", "loud"),
    [("idempotency_error", "IdempotencyError", True), ("invalid_request_error", "Invalid", False)],
)
def test_idempotency_and_invalid_request_errors_are_not_retried(
    fake_stripe, customer_org, caplog, error_type, exception, loud
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [Fail(400, error_type=error_type)]
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        runs.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 1
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts) == ("failed", 1)
    assert aggregate.last_error.startswith(exception)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bool(errors) is loud
    if loud:
        assert "a bug" in aggregate.last_error
