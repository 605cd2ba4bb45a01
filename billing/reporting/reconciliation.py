"""The resend window, and reconciling with Stripe by hand what it closes on.

Stripe deduplicates a meter event ``identifier`` and replays an ``Idempotency-Key`` for a
rolling period of at least 24 hours only (Stripe API reference, "Create a billing meter event",
``identifier``; Stripe API reference, "Idempotent requests"). So an aggregate whose FIRST
send (``first_sent_at``, committed before the request leaves) is older than
``STRIPE_RESEND_WINDOW_HOURS`` (default 23, ``resend_window``) is never resent
automatically: it becomes ``needs_reconciliation`` (``aggregate_flag_for_reconciliation``). An
operator checks Stripe's meter event summaries, then resolves it in the admin
(``reconciliation_resolve``); the admin's "Retry" of ``failed`` aggregates
(``aggregates_requeue_failed``) follows the same rule.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from billing.models import UsageAggregate, UsageAggregateStatus
from billing.reporting.outbox import acknowledge
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)


def resend_window() -> timedelta:
    """How long after an aggregate's first send it may still be resent automatically:
    ``settings.STRIPE_RESEND_WINDOW_HOURS`` (environment, whole hours, default 23; system
    check ``billing.E003`` requires an ``int`` from 1 to 23), inside the rolling period
    of at least 24 h during which Stripe deduplicates meter event identifiers
    (Stripe API reference, "Create a billing meter event", ``identifier``) and
    replays idempotency keys."""
    return timedelta(hours=settings.STRIPE_RESEND_WINDOW_HOURS)


def resend_cutoff(now: datetime | None = None) -> datetime:
    """The resend rule, in one place: an aggregate first sent (``first_sent_at``) before
    this instant (UTC; ``now`` minus ``resend_window()``) is never resent automatically.
    ``past_resend_window`` (one row) and ``aggregates_requeue_failed`` (a queryset) both use it."""
    return (now or timezone.now()) - resend_window()


def past_resend_window(aggregate: UsageAggregate, now: datetime | None = None) -> bool:
    """True when ``aggregate`` was first sent (``first_sent_at``) before ``resend_cutoff(now)``
    (``now`` defaults to the current time): it may not be sent again automatically. An
    aggregate never sent is never past the window."""
    first = aggregate.first_sent_at
    return first is not None and first < resend_cutoff(now)


def reconciliation_message(aggregate: UsageAggregate) -> str:
    """The ``last_error`` of an aggregate past the resend window: what to do, and why."""
    hours = resend_window().total_seconds() / 3600
    return (
        f"first sent at {aggregate.first_sent_at.astimezone(UTC).isoformat()}, more than "
        f"{hours:g} h ago: not resent automatically, because Stripe deduplicates meter event "
        "identifiers and replays idempotency keys for about 24 hours only, so a resend could "
        "count twice. Reconcile against Stripe's meter event summaries "
        f"(GET /v1/billing/meters/<meter id>/event_summaries) for customer and hour "
        f"{aggregate.period_start.astimezone(UTC).isoformat()}, meter "
        f"{aggregate.meter_event_name}, value {format(aggregate.value.normalize(), 'f')}; "
        "then resolve it in the admin (Stripe has it: mark sent; Stripe does not: send again)."
    )


def aggregate_flag_for_reconciliation(organization, aggregate: UsageAggregate) -> None:
    """Mark a ``pending`` aggregate past the resend window ``needs_reconciliation``, with
    ``reconciliation_message`` as its ``last_error`` (also set on ``aggregate`` in memory),
    and log it at ERROR. A conditional update: an aggregate no longer ``pending`` is left
    as it is. Opens ``organization``'s tenant context."""
    aggregate.last_error = reconciliation_message(aggregate)
    with tenant_context(organization):
        UsageAggregate.objects.for_organization(organization).filter(
            pk=aggregate.pk, status=UsageAggregateStatus.PENDING
        ).update(status=UsageAggregateStatus.NEEDS_RECONCILIATION, last_error=aggregate.last_error)
    logger.error("Stripe meter event %s needs reconciliation: %s", aggregate, aggregate.last_error)


def aggregates_requeue_failed(*, aggregates) -> tuple[int, list[str]]:
    """Queue ``failed`` aggregates again (the admin's "Retry" action): ``pending``,
    attempts 0, no backoff, the same identifier and current idempotency key, for the
    next run. Stripe deduplicates that identifier only for a rolling period of at least
    24 hours after the first send, so an aggregate first sent before
    ``resend_cutoff()`` is refused (reconcile it against Stripe's meter event summaries
    instead, ``reconciliation_resolve``); one never sent (``first_sent_at`` null, e.g.
    an hour over 35 days old) is always queued.

    Args:
        aggregates: a ``UsageAggregate`` queryset (any statuses; only ``failed`` rows
            are considered). Runs in the caller's tenant context (the admin's
            cross-tenant path).
    Returns:
        ``(requeued, refused)``: how many were queued, and the identifiers refused.
    """
    cutoff = resend_cutoff()
    with transaction.atomic():
        failed = aggregates.filter(status=UsageAggregateStatus.FAILED)
        too_old = failed.filter(first_sent_at__lt=cutoff)
        refused = list(too_old.order_by("identifier").values_list("identifier", flat=True))
        requeued = failed.filter(
            Q(first_sent_at__isnull=True) | Q(first_sent_at__gte=cutoff)
        ).update(status=UsageAggregateStatus.PENDING, attempts=0, next_attempt_at=None)
    return requeued, refused


def reconciliation_resolve(*, aggregate: UsageAggregate, stripe_has_it: bool, by: str) -> bool:
    """Close a reconciliation by hand (the admin actions), after comparing with Stripe's
    meter event summaries. Only for an aggregate that was sent at least once
    (``first_sent_at``) and is ``failed`` or ``needs_reconciliation``; returns
    ``False`` (nothing changed) for any other.

    * ``stripe_has_it``: Stripe counted it; the aggregate becomes ``sent`` and its
      events ``posted``, by the same conditional updates as an acknowledgement.
    * otherwise: Stripe does not have it; it becomes ``pending`` again as if never sent
      (``first_sent_at`` cleared, attempts 0, a new ``key_revision`` so no old saved
      answer can be replayed), with the same identifier, and the next run sends it.

    ``by`` (who decided, free text) is kept in ``last_error``. Runs in the caller's
    transaction and tenant context (the admin's cross-tenant path).
    """
    resolvable = [UsageAggregateStatus.FAILED, UsageAggregateStatus.NEEDS_RECONCILIATION]
    note = f"reconciled by {by} at {timezone.now().isoformat()}: "
    if stripe_has_it:
        posted = acknowledge(
            aggregate, from_statuses=resolvable, last_error=note + "Stripe has it, marked sent"
        )
        return posted is not None
    return bool(
        UsageAggregate.objects.for_organization(aggregate.organization_id)
        .filter(pk=aggregate.pk, status__in=resolvable, first_sent_at__isnull=False)
        .update(
            status=UsageAggregateStatus.PENDING,
            attempts=0,
            next_attempt_at=None,
            first_sent_at=None,
            key_revision=F("key_revision") + 1,
            last_error=note + "Stripe does not have it, queued to send again",
        )
    )
