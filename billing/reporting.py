"""Usage reporting to Stripe that never double-bills and never swallows late usage.

The flow for one organization (``report_usage``), in the organization's tenant context:

1. **Outbox** (one transaction): pending billing events before ``until`` whose
   ``event_name`` has a Stripe meter (``settings.STRIPE_METERS``) and that are not in
   an aggregate yet are grouped per (meter, UTC hour). Each group becomes a
   ``UsageAggregate`` row with the next ``sequence`` for that hour and an
   ``identifier`` derived from (organization, meter, hour, sequence), and its events
   are linked to it by a conditional ``UPDATE ... WHERE usage_aggregate IS NULL``.
   The row is committed *before* anything is sent.
2. **Send**: every pending aggregate of the organization (new or left over by an
   earlier run) is sent as one Stripe meter event
   (``POST /v1/billing/meter_events``, https://docs.stripe.com/api/billing/meter-event/create)
   with ``identifier`` = the aggregate's identifier and the same value as the
   ``Idempotency-Key`` header (https://docs.stripe.com/api/idempotent_requests).
   Stripe deduplicates meter events by ``identifier``, so a resend after a timeout,
   a 5xx or a crash counts once. Calls are sequential: one in flight per
   (customer, meter) at any time, and a PostgreSQL advisory lock per organization
   keeps two runs from sending for the same customer at once.
3. **Acknowledge** (one transaction): the aggregate moves ``pending -> sent`` and
   its events ``pending -> posted``, both by conditional updates, so a run that
   repeats the step changes nothing.

A crash between 2 and 3 leaves the aggregate pending; the next run sends the same
identifier again (Stripe counts it once) and then acknowledges it. Failures are
retried with exponential backoff up to ``STRIPE_MAX_ATTEMPTS``; then the aggregate
is ``failed`` and stays visible (``/api/v1/billing/health/``, the admin).

Stripe's limits (https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api):
the timestamp may be at most 35 days old and not in the future (only complete hours
before ``until`` <= now are reported, and older hours fail with a clear error), and
the value is a decimal with at most 15 significant digits.

Without ``STRIPE_API_KEY`` reporting is a dry run: it says what it would send and
changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from tenancy.context import tenant_context

logger = logging.getLogger("billing.reporting")

STRIPE_MAX_AGE = timedelta(days=35)
MAX_SIGNIFICANT_DIGITS = 15


class ReportingError(RuntimeError):
    """A report could not run (e.g. another run holds the organization's lock)."""


def current_hour(now: datetime | None = None) -> datetime:
    """The start of the current UTC hour: the default ``until`` (only complete hours)."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


def aggregate_identifier(organization_id, meter: str, period_start: datetime, sequence: int) -> str:
    """``gl-<org>-<meter>-<YYYYMMDDTHH>-<seq>``, at most 100 characters (Stripe's limit).

    The same inputs always give the same identifier; a long meter name is replaced by
    a hash so the identifier stays unique and short.
    """
    meter_part = meter if len(meter) <= 30 else hashlib.sha256(meter.encode()).hexdigest()[:16]
    hour = period_start.astimezone(UTC).strftime("%Y%m%dT%H")
    return f"gl-{organization_id}-{meter_part}-{hour}-{sequence}"


def format_value(value: Decimal) -> str:
    """The meter event value as Stripe expects it: a plain decimal string.

    Raises:
        ValueError: more than 15 significant digits (Stripe's limit).
    """
    normalized = value.normalize()
    digits = len(normalized.as_tuple().digits)
    if digits > MAX_SIGNIFICANT_DIGITS:
        raise ValueError(f"value {value} has {digits} significant digits (Stripe allows 15)")
    text = format(normalized, "f")
    return text


@dataclass
class ReportResult:
    """What one organization's run did (also stored on its ``MeterReport``)."""

    report: MeterReport
    planned: list[dict] = field(default_factory=list)  # dry run: what would be sent
    lines: list[str] = field(default_factory=list)  # progress lines for the command


def stripe_client():
    """A ``stripe.StripeClient`` for ``STRIPE_API_KEY`` over the ``requests`` HTTP client,
    with stripe-python's own retries off (``report_usage`` retries, counting attempts)."""
    import stripe

    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        max_network_retries=0,
    )


def build_aggregates(*, organization, until: datetime, report: MeterReport | None) -> int:
    """Step 1: move the organization's unaggregated pending events before ``until`` into
    new outbox rows. Returns how many aggregates were created. Runs in the caller's
    tenant context and transaction."""
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
        last = (
            UsageAggregate.objects.for_organization(organization)
            .filter(meter_event_name=meter, period_start=hour)
            .aggregate(m=Max("sequence"))["m"]
        )
        sequence = (last or 0) + 1
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
            totals = aggregate.events.aggregate(v=Sum("quantity"), n=Count("id"))
            aggregate.value, aggregate.event_count = totals["v"] or 0, totals["n"]
            aggregate.save(update_fields=["value", "event_count"])
        created += 1
    return created


def _acknowledge(aggregate: UsageAggregate) -> int:
    """Step 3: ``pending -> sent`` and the aggregate's events ``pending -> posted``, by
    conditional updates in one transaction. Returns the number of events posted (0 if
    an earlier run already acknowledged it)."""
    now = timezone.now()
    with transaction.atomic():
        moved = UsageAggregate.objects.filter(
            pk=aggregate.pk, status=UsageAggregateStatus.PENDING
        ).update(status=UsageAggregateStatus.SENT, sent_at=now, attempts=aggregate.attempts)
        if not moved:
            return 0
        return BillingEvent.objects.filter(
            usage_aggregate=aggregate, status=BillingEventStatus.PENDING
        ).update(status=BillingEventStatus.POSTED)


def _record_failure(organization, aggregate: UsageAggregate, error: str, *, final: bool) -> None:
    backoff = settings.STRIPE_RETRY_BACKOFF_SECONDS * (2 ** max(aggregate.attempts - 1, 0))
    aggregate.last_error = error[:2000]
    with tenant_context(organization):
        UsageAggregate.objects.filter(pk=aggregate.pk, status=UsageAggregateStatus.PENDING).update(
            attempts=aggregate.attempts,
            last_error=aggregate.last_error,
            next_attempt_at=timezone.now() + timedelta(seconds=backoff),
            status=UsageAggregateStatus.FAILED if final else UsageAggregateStatus.PENDING,
        )


def send_aggregate(client, aggregate: UsageAggregate, *, organization) -> bool:
    """Step 2 for one aggregate: send it, retrying with exponential backoff
    (``STRIPE_RETRY_BACKOFF_SECONDS`` x 2^n) up to ``STRIPE_MAX_ATTEMPTS`` attempts in all.
    Every attempt carries the same ``identifier`` and ``Idempotency-Key``. Returns
    ``True`` when Stripe acknowledged it; on the last failure the aggregate is ``failed``."""
    import stripe

    timestamp = aggregate.period_start.astimezone(UTC)
    try:
        if timezone.now() - timestamp > STRIPE_MAX_AGE:
            raise ValueError("the hour is more than 35 days old: Stripe no longer accepts it")
        value = format_value(aggregate.value)
    except ValueError as exc:
        aggregate.attempts += 1
        _record_failure(organization, aggregate, str(exc), final=True)
        return False
    params = {
        "event_name": aggregate.meter_event_name,
        "identifier": aggregate.identifier,
        "timestamp": int(timestamp.timestamp()),
        "payload": {"stripe_customer_id": organization.stripe_customer_id, "value": value},
    }
    while True:
        aggregate.attempts += 1
        try:
            client.v1.billing.meter_events.create(
                params=params, options={"idempotency_key": aggregate.identifier}
            )
            return True
        except stripe.StripeError as exc:
            retryable = not isinstance(exc, stripe.InvalidRequestError | stripe.AuthenticationError)
            final = not retryable or aggregate.attempts >= settings.STRIPE_MAX_ATTEMPTS
            _record_failure(organization, aggregate, f"{type(exc).__name__}: {exc}", final=final)
            logger.warning(
                "Stripe meter event %s failed (attempt %s): %s",
                aggregate.identifier,
                aggregate.attempts,
                exc,
            )
            if final:
                return False
            time.sleep(settings.STRIPE_RETRY_BACKOFF_SECONDS * (2 ** (aggregate.attempts - 1)))


@contextlib.contextmanager
def _organization_lock(organization):
    """Hold a session-level PostgreSQL advisory lock for this organization's reporting
    (https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS), so two runs
    never send for the same customer at once. Session-level, so it needs a direct
    connection (not PgBouncer in transaction mode, see DEPLOY.md).

    Raises:
        ReportingError: another run holds it.
    """
    key = int(hashlib.sha256(f"usage-report:{organization.pk}".encode()).hexdigest()[:15], 16)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        if not cursor.fetchone()[0]:
            raise ReportingError(f"another usage report for {organization.slug} is running")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def report_usage(
    *,
    organization,
    until: datetime | None = None,
    dry_run: bool = False,
    requested_by=None,
    report: MeterReport | None = None,
    client_factory: Callable = stripe_client,
) -> ReportResult:
    """Report ``organization``'s pending usage before ``until`` (default: the start of
    the current UTC hour) to Stripe; see the module doc for the steps and guarantees.

    Dry run when ``dry_run`` or when ``STRIPE_API_KEY`` is empty: nothing is written
    and nothing is marked posted; ``ReportResult.planned`` lists what would be sent.
    An organization without ``stripe_customer_id`` is skipped (report status
    ``skipped``). Returns the result with its (saved) ``MeterReport``.

    Raises:
        ReportingError: another run holds this organization's reporting lock.
    """
    until = min(until or current_hour(), timezone.now())
    dry_run = dry_run or not settings.STRIPE_API_KEY
    with tenant_context(organization):
        if report is None:
            report = MeterReport.objects.create(
                organization=organization, requested_by=requested_by, until=until, dry_run=dry_run
            )
        else:
            report.until, report.dry_run = until, dry_run
        result = ReportResult(report=report)
        if not organization.stripe_customer_id:
            _finish(report, MeterReportStatus.SKIPPED, "no Stripe customer (stripe_customer_id)")
            return result
        if dry_run:
            _plan(organization, until, result)
            why = "dry run" if settings.STRIPE_API_KEY else "dry run: STRIPE_API_KEY is not set"
            _finish(report, MeterReportStatus.DRY_RUN, why)
            return result
        report.status = MeterReportStatus.RUNNING
        report.save(update_fields=["status", "until", "dry_run"])

    try:
        with _organization_lock(organization):
            _build_and_send(organization, until, report, result, client_factory)
    except ReportingError as exc:
        with tenant_context(organization):
            _finish(report, MeterReportStatus.FAILED, str(exc))
        raise
    with tenant_context(organization):
        if report.aggregates_failed and report.aggregates_sent:
            status = MeterReportStatus.PARTIAL
        elif report.aggregates_failed:
            status = MeterReportStatus.FAILED
        else:
            status = MeterReportStatus.SUCCEEDED
        _finish(report, status, "")
    return result


def _build_and_send(organization, until, report, result, client_factory) -> None:
    """Steps 1-3 for one organization (the caller holds its reporting lock)."""
    # Step 1, committed before anything is sent.
    with tenant_context(organization):
        report.aggregates_created = build_aggregates(
            organization=organization, until=until, report=report
        )
        report.save(update_fields=["aggregates_created"])

    client = client_factory()
    now = timezone.now()
    with tenant_context(organization):
        due = list(
            UsageAggregate.objects.for_organization(organization)
            .filter(status=UsageAggregateStatus.PENDING)
            .exclude(next_attempt_at__gt=now)
            .order_by("period_start", "meter_event_name", "sequence")
        )
    for aggregate in due:
        # No transaction is held open during the HTTP call.
        if send_aggregate(client, aggregate, organization=organization):
            with tenant_context(organization):
                report.events_posted += _acknowledge(aggregate)
            report.aggregates_sent += 1
            result.lines.append(f"sent {aggregate.identifier} value={aggregate.value}")
        else:
            report.aggregates_failed += 1
            result.lines.append(f"FAILED {aggregate.identifier}: {aggregate.last_error}")


def queue_report(*, organization, requested_by=None) -> MeterReport:
    """Create a queued ``MeterReport`` and run ``report_usage`` for it after the caller's
    transaction commits (``transaction.on_commit``; in-process until a worker queue
    exists). Returns the report (status ``queued``)."""
    report = MeterReport.objects.create(
        organization=organization, requested_by=requested_by, until=current_hour()
    )

    def run():
        try:
            report_usage(organization=organization, report=report, requested_by=requested_by)
        except ReportingError as exc:  # recorded on the report by report_usage
            logger.warning("usage report %s not run: %s", report.pk, exc)

    transaction.on_commit(run)
    return report


def _plan(organization, until: datetime, result: ReportResult) -> None:
    """Dry run: what step 1 and 2 would send, computed without writing."""
    with transaction.atomic():
        sid = transaction.savepoint()
        build_aggregates(organization=organization, until=until, report=None)
        for aggregate in UsageAggregate.objects.for_organization(organization).filter(
            status=UsageAggregateStatus.PENDING
        ):
            result.planned.append(
                {
                    "identifier": aggregate.identifier,
                    "meter": aggregate.meter_event_name,
                    "hour": aggregate.period_start.isoformat(),
                    "value": format(aggregate.value.normalize(), "f"),
                    "events": aggregate.event_count,
                }
            )
        transaction.savepoint_rollback(sid)


def _finish(report: MeterReport, status: str, detail: str) -> None:
    report.status = status
    report.detail = detail
    report.finished_at = timezone.now()
    report.save()
