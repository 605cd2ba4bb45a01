"""The outbox: ``UsageAggregate`` rows built from pending billing events, committed before
anything is sent, and acknowledged once Stripe has them.

Building (step 1 of a run, ``billing.reporting.runs``), in one transaction: pending billing
events before ``until`` whose ``event_name`` has a Stripe meter (``settings.STRIPE_METERS``)
and that are not in an aggregate yet are grouped per (meter, UTC hour). Each group becomes a
``UsageAggregate`` row with the next ``sequence`` for that hour and an ``identifier`` derived
from (organization, meter, hour, sequence) (``aggregate_identifier``), and its events are
linked to it by a conditional ``UPDATE ... WHERE usage_aggregate IS NULL``. A sum with more
than 15 significant digits is split, by events, into several aggregates (next sequences)
whose values each fit.

Acknowledging (step 3, ``acknowledge``), in one transaction: the aggregate moves
``pending -> sent`` and its events ``pending -> posted``, both by conditional updates, so a
run that repeats the step changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.reporting.identifiers import aggregate_identifier, value_fits

logger = logging.getLogger(__name__)


def aggregates_build(*, organization, until: datetime, report: MeterReport | None) -> int:
    """Step 1: move the organization's unaggregated pending events before ``until`` into
    new outbox rows, then split every never-sent pending aggregate whose value has more
    than 15 significant digits (``aggregates_split_oversized``). Returns how many
    aggregates were created. Runs in the caller's tenant context and transaction."""
    meters: dict[str, str] = settings.STRIPE_METERS
    groups = (
        BillingEvent.objects.for_organization(organization)
        .filter(
            status=BillingEventStatus.PENDING,
            usage_aggregate__isnull=True,
            created_at__lt=until,
            event_name__in=list(meters),
        )
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("event_name", "hour")
        .annotate(value=Sum("quantity"), n=Count("id"))
        .order_by("hour", "event_name")
    )
    created = 0
    for group in groups:
        meter = meters[group["event_name"]]
        hour = group["hour"]
        sequence = _next_sequence(organization, meter, hour)
        aggregate = UsageAggregate.objects.create(
            organization=organization,
            report=report,
            event_name=group["event_name"],
            meter_event_name=meter,
            period_start=hour,
            sequence=sequence,
            value=group["value"],
            event_count=group["n"],
            identifier=aggregate_identifier(organization.pk, meter, hour, sequence),
        )
        linked = (
            BillingEvent.objects.for_organization(organization)
            .filter(
                status=BillingEventStatus.PENDING,
                usage_aggregate__isnull=True,
                event_name=group["event_name"],
                created_at__gte=hour,
                created_at__lt=min(hour + timedelta(hours=1), until),
            )
            .update(usage_aggregate=aggregate)
        )
        if linked != group["n"]:  # rows changed under us: recompute from what was linked
            totals = (
                BillingEvent.objects.for_organization(organization)
                .filter(usage_aggregate=aggregate)
                .aggregate(v=Sum("quantity"), n=Count("id"))
            )
            aggregate.value, aggregate.event_count = totals["v"] or 0, totals["n"]
            aggregate.save(update_fields=["value", "event_count"])
        created += 1
    return created + aggregates_split_oversized(organization=organization, report=report)


def _next_sequence(organization, meter: str, hour: datetime) -> int:
    last = (
        UsageAggregate.objects.for_organization(organization)
        .filter(meter_event_name=meter, period_start=hour)
        .aggregate(m=Max("sequence"))["m"]
    )
    return (last or 0) + 1


def aggregates_split_oversized(*, organization, report: MeterReport | None) -> int:
    """Split each pending, never-sent aggregate of ``organization`` whose value has more
    than 15 significant digits (Stripe's limit) into several aggregates that each fit.

    Events are taken in (``created_at``, ``id``) order and kept together while their
    running sum fits; the first run stays in the aggregate, every further run becomes
    a new aggregate with the next free ``sequence`` of that (meter, hour) and its own
    identifier. Exact: nothing is rounded, every event is in exactly one aggregate and
    Stripe's sum meter adds the parts up. A single event always fits (``quantity`` has
    at most 12 digits). Only aggregates never sent (``first_sent_at`` is null) are
    touched, so Stripe never saw their identifier. Returns the number of aggregates
    created. Runs in the caller's tenant context and transaction.
    """
    created = 0
    candidates = UsageAggregate.objects.for_organization(organization).filter(
        status=UsageAggregateStatus.PENDING, first_sent_at__isnull=True
    )
    for aggregate in candidates:
        if value_fits(aggregate.value):
            continue
        runs: list[tuple[list, Decimal]] = []
        ids: list = []
        total = Decimal(0)
        events = BillingEvent.objects.for_organization(organization).filter(
            usage_aggregate=aggregate
        )
        for event_id, quantity in events.order_by("created_at", "id").values_list("id", "quantity"):
            if ids and not value_fits(total + quantity):
                runs.append((ids, total))
                ids, total = [], Decimal(0)
            ids.append(event_id)
            total += quantity
        if ids:
            runs.append((ids, total))
        if len(runs) < 2:
            continue  # nothing to split (no events): sending it fails with a clear error
        first_ids, first_total = runs[0]
        aggregate.value, aggregate.event_count = first_total, len(first_ids)
        aggregate.save(update_fields=["value", "event_count"])
        for ids, total in runs[1:]:
            meter, hour = aggregate.meter_event_name, aggregate.period_start
            sequence = _next_sequence(organization, meter, hour)
            part = UsageAggregate.objects.create(
                organization=organization,
                report=report,
                event_name=aggregate.event_name,
                meter_event_name=aggregate.meter_event_name,
                period_start=aggregate.period_start,
                sequence=sequence,
                value=total,
                event_count=len(ids),
                identifier=aggregate_identifier(organization.pk, meter, hour, sequence),
            )
            BillingEvent.objects.for_organization(organization).filter(
                pk__in=ids, usage_aggregate=aggregate
            ).update(usage_aggregate=part)
            created += 1
        logger.info(
            "aggregate %s: value over 15 significant digits, split into %s aggregates",
            aggregate.identifier,
            len(runs),
        )
    return created


def acknowledge(
    aggregate: UsageAggregate,
    *,
    from_statuses=(UsageAggregateStatus.PENDING,),
    last_error: str | None = None,
) -> int | None:
    """Step 3: the aggregate ``<one of from_statuses> -> sent`` and its events
    ``pending -> posted``, by conditional updates in one transaction, only if it was
    sent at least once (``first_sent_at`` set: Stripe cannot have it otherwise).
    ``from_statuses`` is ``pending`` for a run;
    ``billing.reporting.reconciliation.reconciliation_resolve`` passes ``failed`` and
    ``needs_reconciliation`` (and ``last_error``, its note).

    Returns:
        the number of events posted, or ``None`` when the aggregate did not move (in
        none of ``from_statuses``, e.g. an earlier run already acknowledged it).
    """
    now = timezone.now()
    changes = {"status": UsageAggregateStatus.SENT, "sent_at": now, "attempts": aggregate.attempts}
    if last_error is not None:
        changes["last_error"] = last_error
    with transaction.atomic():
        moved = (
            UsageAggregate.objects.for_organization(aggregate.organization_id)
            .filter(pk=aggregate.pk, status__in=list(from_statuses), first_sent_at__isnull=False)
            .update(**changes)
        )
        if not moved:
            return None
        return (
            BillingEvent.objects.for_organization(aggregate.organization_id)
            .filter(usage_aggregate=aggregate, status=BillingEventStatus.PENDING)
            .update(status=BillingEventStatus.POSTED)
        )
