"""Sending one aggregate as one Stripe meter event (step 2 of a run, ``billing.reporting.runs``).

Every pending aggregate of the organization (new or left over by an earlier run) is sent as
``POST /v1/billing/meter_events`` (Stripe API reference, "Create a billing meter event")
with ``identifier`` = the aggregate's identifier, always the same, and an
``Idempotency-Key`` header (Stripe API reference, "Idempotent requests"): the same key
after a network error or timeout, a new one after a 5xx answer (what each error means:
``billing.reporting.stripe_api``). Failures are retried with exponential backoff up to
``STRIPE_MAX_ATTEMPTS``; then the aggregate is ``failed`` and stays visible
(``/api/v1/billing/health/``, the admin). Both of Stripe's guarantees last about 24 hours,
so an aggregate first sent longer ago than the resend window is never resent
automatically (``billing.reporting.reconciliation``).

Calls are sequential: one in flight per (customer, meter) at any time (a run sends its
aggregates one after the other, and ``billing.reporting.locks`` keeps two runs from sending
for the same customer at once). No transaction is held open during a request.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, timedelta

from django.conf import settings
from django.utils import timezone

from billing.models import UsageAggregate, UsageAggregateStatus
from billing.reporting.identifiers import STRIPE_MAX_AGE, format_value
from billing.reporting.reconciliation import aggregate_flag_for_reconciliation, past_resend_window
from billing.reporting.stripe_api import classify_stripe_error
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)

#: What ``aggregate_send`` returns.
SENT = "sent"
FAILED = "failed"
NEEDS_RECONCILIATION = "needs_reconciliation"


def aggregate_send(client, aggregate: UsageAggregate, *, organization) -> str:
    """Step 2 for one aggregate: send it, retrying with exponential backoff
    (``STRIPE_RETRY_BACKOFF_SECONDS`` x 2^n) up to ``STRIPE_MAX_ATTEMPTS`` attempts in all
    (counted over runs).

    Every attempt carries the same ``identifier``; the ``Idempotency-Key`` is the
    aggregate's ``idempotency_key``, which changes only after a 5xx answer
    (``classify_stripe_error``). Before the first attempt ``first_sent_at`` is
    committed; an aggregate first sent longer ago than
    ``billing.reporting.reconciliation.resend_window()`` is not sent.

    Returns:
        ``"sent"`` (Stripe acknowledged it, or already had its identifier),
        ``"failed"`` (status ``failed``, ``last_error`` says why) or
        ``"needs_reconciliation"`` (past the resend window).
    """
    import stripe

    if past_resend_window(aggregate):
        aggregate_flag_for_reconciliation(organization, aggregate)
        return NEEDS_RECONCILIATION
    timestamp = aggregate.period_start.astimezone(UTC)
    try:
        if timezone.now() - timestamp > STRIPE_MAX_AGE:
            raise ValueError("the hour is more than 35 days old: Stripe no longer accepts it")
        value = format_value(aggregate.value)
    except ValueError as exc:
        aggregate.attempts += 1
        _record_failure(organization, aggregate, str(exc), final=True)
        return FAILED
    params = {
        "event_name": aggregate.meter_event_name,
        "identifier": aggregate.identifier,
        "timestamp": int(timestamp.timestamp()),
        "payload": {"stripe_customer_id": organization.stripe_customer_id, "value": value},
    }
    while True:
        if aggregate.first_sent_at is None:
            _mark_first_sent(organization, aggregate)
        elif past_resend_window(aggregate):
            aggregate_flag_for_reconciliation(organization, aggregate)
            return NEEDS_RECONCILIATION
        aggregate.attempts += 1
        try:
            client.v1.billing.meter_events.create(
                params=params, options={"idempotency_key": aggregate.idempotency_key}
            )
            return SENT
        except stripe.StripeError as exc:
            verdict = classify_stripe_error(exc)
            if verdict.delivered:
                logger.info(
                    "Stripe already has meter event %s (duplicate identifier): acknowledged",
                    aggregate.identifier,
                )
                return SENT
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, stripe.IdempotencyError):
                error += " (Idempotency-Key reused with different parameters: a bug, not retried)"
                logger.error("Stripe meter event %s: %s", aggregate.identifier, error)
            if verdict.new_key:
                aggregate.key_revision += 1
            final = not verdict.retry or aggregate.attempts >= settings.STRIPE_MAX_ATTEMPTS
            _record_failure(organization, aggregate, error, final=final)
            logger.warning(
                "Stripe meter event %s failed (attempt %s%s): %s",
                aggregate.identifier,
                aggregate.attempts,
                ", final" if final else "",
                exc,
            )
            if final:
                return FAILED
            time.sleep(settings.STRIPE_RETRY_BACKOFF_SECONDS * (2 ** (aggregate.attempts - 1)))


def _record_failure(organization, aggregate: UsageAggregate, error: str, *, final: bool) -> None:
    backoff = settings.STRIPE_RETRY_BACKOFF_SECONDS * (2 ** max(aggregate.attempts - 1, 0))
    aggregate.last_error = error[:2000]
    with tenant_context(organization):
        UsageAggregate.objects.for_organization(organization).filter(
            pk=aggregate.pk, status=UsageAggregateStatus.PENDING
        ).update(
            attempts=aggregate.attempts,
            key_revision=aggregate.key_revision,
            last_error=aggregate.last_error,
            next_attempt_at=timezone.now() + timedelta(seconds=backoff),
            status=UsageAggregateStatus.FAILED if final else UsageAggregateStatus.PENDING,
        )


def _mark_first_sent(organization, aggregate: UsageAggregate) -> None:
    """Record (and commit) ``first_sent_at`` before the first request leaves, so even a
    crash right after sending cannot hide that Stripe may have the event."""
    now = timezone.now()
    with tenant_context(organization):
        row = UsageAggregate.objects.for_organization(organization).filter(pk=aggregate.pk)
        row.filter(first_sent_at__isnull=True).update(first_sent_at=now)
        aggregate.first_sent_at = row.values_list("first_sent_at", flat=True).get()
