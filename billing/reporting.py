"""Usage reporting to Stripe that never double-bills and never swallows late usage.

The flow for one organization (``report_usage``), in the organization's tenant context:

1. **Outbox** (one transaction): pending billing events before ``until`` whose
   ``event_name`` has a Stripe meter (``settings.STRIPE_METERS``) and that are not in
   an aggregate yet are grouped per (meter, UTC hour). Each group becomes a
   ``UsageAggregate`` row with the next ``sequence`` for that hour and an
   ``identifier`` derived from (organization, meter, hour, sequence), and its events
   are linked to it by a conditional ``UPDATE ... WHERE usage_aggregate IS NULL``.
   A sum with more than 15 significant digits is split, by events, into several
   aggregates (next sequences) whose values each fit. The rows are committed
   *before* anything is sent.
2. **Send**: every pending aggregate of the organization (new or left over by an
   earlier run) is sent as one Stripe meter event
   (``POST /v1/billing/meter_events``, https://docs.stripe.com/api/billing/meter-event/create)
   with ``identifier`` = the aggregate's identifier, always the same, and an
   ``Idempotency-Key`` header (https://docs.stripe.com/api/idempotent_requests):

   * Stripe saves the result of a key, a 500 included, and replays it for the same
     key (the comment on ``_should_retry`` in stripe-python's ``_http_client.py``
     says so too). So after a network error or timeout the SAME key is sent again
     (Stripe may have received the request; the key replays its result), while after
     a definitive 5xx answer the next attempt uses a NEW key
     (``<identifier>-r<n>``, ``UsageAggregate.key_revision``, persisted).
   * Stripe enforces the uniqueness of a meter event ``identifier`` "within a rolling
     period of at least 24 hours" (API reference, ``identifier``), answering a
     duplicate with a 400 ("An event already exists with identifier ...",
     ``Stripe-Should-Retry: false``). The identifier names exactly one aggregate whose
     value never changes once sent, so that answer means Stripe already has this
     aggregate: it is acknowledged like a success.
   * ``Stripe-Should-Retry: false`` is obeyed (no further attempt), as is the
     ``should_retry`` of a connection error; a 4xx other than 409 and 429 is final;
     ``IdempotencyError`` (a key reused with other parameters) is a bug and is
     logged at ERROR, never retried.
   * Both guarantees last about 24 hours, so an aggregate whose FIRST send
     (``first_sent_at``, committed before the request leaves) is older than
     ``STRIPE_RESEND_WINDOW_HOURS`` (default 23) is never resent automatically: it
     becomes ``needs_reconciliation`` (check Stripe's meter event summaries, then
     resolve it in the admin, see ``resolve_reconciliation``).

   Calls are sequential: one in flight per (customer, meter) at any time, and a
   PostgreSQL advisory lock per organization keeps two runs from sending for the same
   customer at once.
3. **Acknowledge** (one transaction): the aggregate moves ``pending -> sent`` and
   its events ``pending -> posted``, both by conditional updates, so a run that
   repeats the step changes nothing.

A crash between 2 and 3 leaves the aggregate pending; the next run sends the same
identifier with the same key (Stripe replays the answer or rejects the duplicate
identifier: counted once) and then acknowledges it. Failures are retried with
exponential backoff up to ``STRIPE_MAX_ATTEMPTS``; then the aggregate is ``failed``
and stays visible (``/api/v1/billing/health/``, the admin).

Stripe's limits (https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api):
the timestamp may be at most 35 days old and not in the future (only complete hours
before ``until`` <= now are reported, and older hours fail with a clear error), and
the value is a decimal with at most 15 significant digits (Stripe answers a 400 for
more since API version 2026-04-22, changelog "billing meter event values
validation"); events are never rounded, a larger hour is split instead.

Without ``STRIPE_API_KEY`` reporting is a dry run: it says what it would send and
changes nothing.

``POST /api/v1/billing/report-usage/`` queues a run on an in-process worker
(``queue_report``); see its docstring for what happens when that process dies.

Runs of one organization never overlap: a run that finds the organization's lock held
is recorded as ``skipped`` (the run holding it does the work). A report's status moves
only by conditional updates (``queued -> running`` when its run begins,
``running -> <final>`` when it ends), so a report marked ``failed`` ("abandoned")
meanwhile stays so. A run
that holds the lock marks the organization's other reports abandoned
(``_abandon_stale_reports``): ``running`` ones whose run began (``started_at``) more
than ``ABANDONED_AFTER`` (1 hour) ago, and ``queued`` ones created more than that ago.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, F, Max, Q, Sum, When
from django.db.models.functions import Coalesce, TruncHour
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
#: How long a report counts as in progress (``_unfinished_reports``): a ``running`` one
#: since its ``started_at``, a ``queued`` one since its ``created_at``. Within it a POST
#: returns the report in progress instead of queuing another (``queue_report``); past
#: it a run holding the organization's lock marks the report abandoned
#: (``_abandon_stale_reports``).
ABANDONED_AFTER = timedelta(hours=1)
#: ``detail`` of a ``running`` report marked abandoned: its run began more than
#: ``ABANDONED_AFTER`` ago and does not hold the organization's lock.
ABANDONED_DETAIL = "abandoned: the process running it stopped"
#: ``detail`` of a ``queued`` report marked abandoned (``{report}``: the id of the run
#: that marked it). Its process may have stopped, or it may still be waiting behind
#: other reports in that process's worker: nothing here can tell which, so it says both.
ABANDONED_QUEUED_DETAIL = (
    "abandoned: still queued after 1 hour (its process stopped, or its worker was busy); "
    "run {report} reported the organization's pending usage instead"
)
#: Namespaces of the organization's PostgreSQL advisory locks (``_advisory_key``).
RUN_LOCK = "usage-report"
QUEUE_LOCK = "usage-report-queue"

SENT = "sent"
FAILED = "failed"
NEEDS_RECONCILIATION = "needs_reconciliation"


class ReportingError(RuntimeError):
    """Another run holds the organization's reporting lock (``_organization_lock``);
    ``report_usage`` records its report as ``skipped`` and does not raise it."""


def current_hour(now: datetime | None = None) -> datetime:
    """The start of the current UTC hour: the default ``until`` (only complete hours)."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


def resend_window() -> timedelta:
    """How long after an aggregate's first send it may still be resent automatically:
    ``settings.STRIPE_RESEND_WINDOW_HOURS`` (environment, whole hours, default 23; system
    check ``billing.E003`` requires an ``int`` from 1 to 23), inside the rolling period
    of at least 24 h during which Stripe deduplicates meter event identifiers
    (https://docs.stripe.com/api/billing/meter-event/create, ``identifier``) and
    replays idempotency keys."""
    return timedelta(hours=settings.STRIPE_RESEND_WINDOW_HOURS)


def resend_cutoff(now: datetime | None = None) -> datetime:
    """The resend rule, in one place: an aggregate first sent (``first_sent_at``) before
    this instant (UTC; ``now`` minus ``resend_window()``) is never resent automatically.
    ``_past_resend_window`` (one row) and ``requeue_failed`` (a queryset) both use it."""
    return (now or timezone.now()) - resend_window()


def aggregate_identifier(organization_id, meter: str, period_start: datetime, sequence: int) -> str:
    """``gl-<org>-<meter>-<YYYYMMDDTHH>-<seq>``, at most 100 characters (Stripe's limit).

    The same inputs always give the same identifier; a long meter name is replaced by
    a hash so the identifier stays unique and short.
    """
    meter_part = meter if len(meter) <= 30 else hashlib.sha256(meter.encode()).hexdigest()[:16]
    hour = period_start.astimezone(UTC).strftime("%Y%m%dT%H")
    return f"gl-{organization_id}-{meter_part}-{hour}-{sequence}"


def value_fits(value: Decimal) -> bool:
    """True when ``value`` has at most 15 significant digits (trailing zeros do not count)."""
    return len(value.normalize().as_tuple().digits) <= MAX_SIGNIFICANT_DIGITS


def format_value(value: Decimal) -> str:
    """The meter event value as Stripe expects it: a plain decimal string.

    Raises:
        ValueError: more than 15 significant digits (Stripe's limit).
    """
    normalized = value.normalize()
    if not value_fits(normalized):
        digits = len(normalized.as_tuple().digits)
        raise ValueError(f"value {value} has {digits} significant digits (Stripe allows 15)")
    return format(normalized, "f")


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
    new outbox rows, then split every never-sent pending aggregate whose value has more
    than 15 significant digits (``split_oversized_aggregates``). Returns how many
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
    return created + split_oversized_aggregates(organization=organization, report=report)


def _next_sequence(organization, meter: str, hour: datetime) -> int:
    last = (
        UsageAggregate.objects.for_organization(organization)
        .filter(meter_event_name=meter, period_start=hour)
        .aggregate(m=Max("sequence"))["m"]
    )
    return (last or 0) + 1


def split_oversized_aggregates(*, organization, report: MeterReport | None) -> int:
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


def _acknowledge(
    aggregate: UsageAggregate,
    *,
    from_statuses=(UsageAggregateStatus.PENDING,),
    last_error: str | None = None,
) -> int | None:
    """Step 3: the aggregate ``<one of from_statuses> -> sent`` and its events
    ``pending -> posted``, by conditional updates in one transaction, only if it was
    sent at least once (``first_sent_at`` set: Stripe cannot have it otherwise).
    ``from_statuses`` is ``pending`` for a run; ``resolve_reconciliation`` passes
    ``failed`` and ``needs_reconciliation`` (and ``last_error``, its note).

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


def _past_resend_window(aggregate: UsageAggregate, now: datetime | None = None) -> bool:
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


def _flag_for_reconciliation(organization, aggregate: UsageAggregate) -> None:
    aggregate.last_error = reconciliation_message(aggregate)
    with tenant_context(organization):
        UsageAggregate.objects.for_organization(organization).filter(
            pk=aggregate.pk, status=UsageAggregateStatus.PENDING
        ).update(status=UsageAggregateStatus.NEEDS_RECONCILIATION, last_error=aggregate.last_error)
    logger.error("Stripe meter event %s needs reconciliation: %s", aggregate, aggregate.last_error)


@dataclass(frozen=True)
class ErrorVerdict:
    """How ``send_aggregate`` treats a ``stripe.StripeError``.

    ``delivered``: Stripe already has the event (duplicate identifier); ``retry``:
    another attempt may follow; ``new_key``: the next attempt needs a new
    ``Idempotency-Key`` (Stripe saved this answer under the current one).
    """

    delivered: bool
    retry: bool
    new_key: bool


def _header(exc, name: str) -> str | None:
    for key, value in (getattr(exc, "headers", None) or {}).items():
        if key.lower() == name.lower():
            return str(value).strip().lower()
    return None


def is_duplicate_identifier(exc) -> bool:
    """True for Stripe's answer to a meter event whose ``identifier`` it already has: a
    400 ``invalid_request_error`` "An event already exists with identifier ..." (code
    ``duplicate_meter_event`` where Stripe sets one)."""
    import stripe

    if not isinstance(exc, stripe.InvalidRequestError):
        return False
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return exc.code == "duplicate_meter_event" or "already exists with identifier" in message


def classify_stripe_error(exc) -> ErrorVerdict:
    """Decide what a failed meter-event request means (see the module doc, step 2).

    Rules, in order: a duplicate identifier is delivered; ``IdempotencyError`` is final
    (a bug); a 5xx needs a new key; ``Stripe-Should-Retry: true/false`` decides when
    present (https://docs.stripe.com/error-low-level, and stripe-python's
    ``_should_retry``); a connection error follows its ``should_retry`` (timeouts and
    refused connections retry with the same key, TLS failures do not); 409 (a
    concurrent request with the same key) and 429 retry with the same key; any
    other 4xx is final.
    """
    import stripe

    if is_duplicate_identifier(exc):
        return ErrorVerdict(delivered=True, retry=False, new_key=False)
    if isinstance(exc, stripe.IdempotencyError):
        return ErrorVerdict(delivered=False, retry=False, new_key=False)
    status = getattr(exc, "http_status", None)
    new_key = status is not None and status >= 500
    advice = _header(exc, "Stripe-Should-Retry")
    if advice in ("true", "false"):
        retry = advice == "true"
    elif isinstance(exc, stripe.APIConnectionError):
        retry = bool(getattr(exc, "should_retry", True))
    else:
        retry = new_key or status in (409, 429) or isinstance(exc, stripe.RateLimitError)
    return ErrorVerdict(delivered=False, retry=retry, new_key=new_key)


def send_aggregate(client, aggregate: UsageAggregate, *, organization) -> str:
    """Step 2 for one aggregate: send it, retrying with exponential backoff
    (``STRIPE_RETRY_BACKOFF_SECONDS`` x 2^n) up to ``STRIPE_MAX_ATTEMPTS`` attempts in all
    (counted over runs).

    Every attempt carries the same ``identifier``; the ``Idempotency-Key`` is the
    aggregate's ``idempotency_key``, which changes only after a 5xx answer
    (``classify_stripe_error``). Before the first attempt ``first_sent_at`` is
    committed; an aggregate first sent longer ago than ``resend_window()`` is not sent.

    Returns:
        ``"sent"`` (Stripe acknowledged it, or already had its identifier),
        ``"failed"`` (status ``failed``, ``last_error`` says why) or
        ``"needs_reconciliation"`` (past the resend window).
    """
    import stripe

    if _past_resend_window(aggregate):
        _flag_for_reconciliation(organization, aggregate)
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
        elif _past_resend_window(aggregate):
            _flag_for_reconciliation(organization, aggregate)
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


def _advisory_key(purpose: str, organization_id) -> int:
    """The PostgreSQL advisory lock key (a ``bigint``) of ``organization_id`` (a UUID or
    any value with a stable ``str``) for ``purpose``: ``RUN_LOCK`` (the session lock a
    run holds for all its work, ``_organization_lock``) or ``QUEUE_LOCK`` (the
    transaction lock that serializes ``queue_report``). Different purposes give
    different keys, so a POST never waits for a run in progress. The first 60 bits of
    SHA-256 of ``"<purpose>:<organization_id>"``: stable across processes and Python
    versions (unlike ``hash()``), always positive and within ``bigint``
    (https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS
    takes one ``bigint`` key)."""
    return int(hashlib.sha256(f"{purpose}:{organization_id}".encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def _organization_lock(organization):
    """Hold a session-level PostgreSQL advisory lock for this organization's reporting
    (https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS), so two runs
    never send for the same customer at once. Taken on the calling thread's own
    connection (``django.db.connection`` is per thread: the worker of ``queue_report``
    has its own). Session-level, so it needs a direct connection (not PgBouncer in
    transaction mode, see DEPLOY.md).

    Raises:
        ReportingError: another run holds it.
    """
    key = _advisory_key(RUN_LOCK, organization.pk)
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
    Report status ``skipped`` (``detail`` says which): the organization has no
    ``stripe_customer_id``, or another run holds its reporting lock (that run sends the
    pending usage; nothing is lost). A run that takes the lock first marks the
    organization's abandoned reports ``failed`` (``_abandon_stale_reports``).

    Without ``report`` a ``running`` report is created (``started_at`` now). With
    ``report`` (the worker's, see ``queue_report``: a report of this organization) the
    run claims it by a conditional update ``queued -> running`` (``started_at`` now)
    and does nothing else if that changes no row (the report was marked abandoned or
    run meanwhile: a warning is logged). Once it holds the organization's lock it checks
    again that the report is still ``running`` (it may have been marked abandoned while
    the run waited) and stops if not. It ends the report by a conditional update
    ``running -> <final status>`` (``_finish``), so a report marked ``failed``
    meanwhile is never turned back. Returns the result with the report as stored
    (refreshed from the database when it was not this run's to change).

    Raises:
        Exception: anything unexpected while building or sending (a database error
            included); the report is saved as ``failed`` with the exception in
            ``detail`` first (``_fail_report``), then it propagates.
    """
    until = min(until or current_hour(), timezone.now())
    dry_run = dry_run or not settings.STRIPE_API_KEY
    with tenant_context(organization):
        if report is None:
            report = MeterReport.objects.create(
                organization=organization,
                requested_by=requested_by,
                until=until,
                dry_run=dry_run,
                status=MeterReportStatus.RUNNING,
                started_at=timezone.now(),
            )
        elif not _start(report, until=until, dry_run=dry_run):
            logger.warning(
                "usage report %s is no longer queued (%s: %s): not run",
                report.pk,
                report.status,
                report.detail,
            )
            return ReportResult(report=report)
        result = ReportResult(report=report)
        if not organization.stripe_customer_id:
            _finish(report, MeterReportStatus.SKIPPED, "no Stripe customer (stripe_customer_id)")
            return result
        if dry_run:
            _plan(organization, until, result)
            why = "dry run" if settings.STRIPE_API_KEY else "dry run: STRIPE_API_KEY is not set"
            _finish(report, MeterReportStatus.DRY_RUN, why)
            return result

    try:
        with _organization_lock(organization):
            with tenant_context(organization):
                still_running = (
                    MeterReport.objects.for_organization(organization)
                    .filter(pk=report.pk, status=MeterReportStatus.RUNNING)
                    .exists()
                )
            if not still_running:
                with tenant_context(organization):
                    report.refresh_from_db()
                logger.warning(
                    "usage report %s was marked %s while it waited for the organization's "
                    "lock (%s): not run",
                    report.pk,
                    report.status,
                    report.detail,
                )
                return result
            abandoned = _abandon_stale_reports(organization, current=report)
            if abandoned:
                result.lines.append(f"marked {abandoned} abandoned report(s) failed")
            _build_and_send(organization, until, report, result, client_factory)
    except ReportingError as exc:
        with tenant_context(organization):
            _finish(
                report,
                MeterReportStatus.SKIPPED,
                f"{exc}: this run was skipped; the run holding the lock sends the pending usage",
            )
        return result
    except Exception as exc:
        _fail_report(organization, report.pk, f"{type(exc).__name__}: {exc}")
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


def _start(report: MeterReport, *, until: datetime, dry_run: bool) -> bool:
    """Claim ``report`` for this run: ``queued -> running`` with ``started_at`` now (and
    ``until``, ``dry_run``), by a conditional update. Returns ``True`` when this run
    claimed it (``report`` updated in memory), ``False`` when it was not ``queued``
    (``report`` refreshed from the database). Runs in the caller's tenant context."""
    now = timezone.now()
    claimed = (
        MeterReport.objects.for_organization(report.organization_id)
        .filter(pk=report.pk, status=MeterReportStatus.QUEUED)
        .update(status=MeterReportStatus.RUNNING, started_at=now, until=until, dry_run=dry_run)
    )
    if not claimed:
        report.refresh_from_db()
        return False
    report.status, report.started_at, report.until, report.dry_run = (
        MeterReportStatus.RUNNING,
        now,
        until,
        dry_run,
    )
    return True


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
        outcome = send_aggregate(client, aggregate, organization=organization)
        if outcome == SENT:
            with tenant_context(organization):
                report.events_posted += _acknowledge(aggregate) or 0
            report.aggregates_sent += 1
            result.lines.append(f"sent {aggregate.identifier} value={aggregate.value}")
        elif outcome == NEEDS_RECONCILIATION:
            report.aggregates_failed += 1
            result.lines.append(
                f"NEEDS RECONCILIATION {aggregate.identifier}: {aggregate.last_error}"
            )
        else:
            report.aggregates_failed += 1
            result.lines.append(f"FAILED {aggregate.identifier}: {aggregate.last_error}")


def _unfinished_reports(organization, *, stale: bool, now: datetime | None = None):
    """``organization``'s reports still ``queued`` or ``running``, split by
    ``ABANDONED_AFTER`` in one place (a ``MeterReport`` queryset, for ``queue_report``
    and ``_abandon_stale_reports``).

    A report's age is counted from ``in_progress_since`` (annotated): ``started_at`` for
    a ``running`` report (when its run began; ``created_at`` for a row from before
    migration 0009, which has none), ``created_at`` for a ``queued`` one. ``stale=False``:
    those that began or were queued within ``ABANDONED_AFTER`` before ``now`` (default:
    the current time); ``stale=True``: the others. Runs in the caller's tenant context.
    """
    cutoff = (now or timezone.now()) - ABANDONED_AFTER
    reports = (
        MeterReport.objects.for_organization(organization)
        .filter(status__in=[MeterReportStatus.QUEUED, MeterReportStatus.RUNNING])
        .annotate(
            in_progress_since=Case(
                When(status=MeterReportStatus.RUNNING, then=Coalesce("started_at", "created_at")),
                default=F("created_at"),
            )
        )
    )
    if stale:
        return reports.filter(in_progress_since__lt=cutoff)
    return reports.filter(in_progress_since__gte=cutoff)


def _abandon_stale_reports(organization, *, current: MeterReport) -> int:
    """Mark ``organization``'s stale unfinished reports (``_unfinished_reports``), other
    than ``current``, ``failed`` (``finished_at`` now). Called only by a run that holds
    the organization's reporting lock (``_organization_lock``), which a run keeps for
    all of its work. The rule, precisely:

    * ``running`` and its run began (``started_at``) more than ``ABANDONED_AFTER`` ago:
      detail ``ABANDONED_DETAIL``. A live run holds the lock from moments after it
      begins (``report_usage``: claim, then lock) to its end; only that step, and the
      dry-run and no-Stripe-customer paths that end at once, run without it. This run
      holds it, so no one is running that report: its process stopped. (A report that waited long in
      a worker's queue is not old here: its age counts from ``started_at``.)
    * ``queued`` and created more than ``ABANDONED_AFTER`` ago: detail
      ``ABANDONED_QUEUED_DETAIL``. Either its process stopped, or it is still waiting
      in that process's worker (one thread, runs of all organizations in turn); no
      process can tell another's queue, so the detail names both. Either way this run
      reports the organization's pending usage now; if its worker reaches it later, the
      claim ``queued -> running`` changes nothing and it is not run (``report_usage``).

    Their work is not lost: it lives in the database (pending events and outbox rows,
    see ``queue_report``) and this run picks it up. Returns how many were marked."""
    with tenant_context(organization):
        now = timezone.now()
        stale = _unfinished_reports(organization, stale=True, now=now).exclude(pk=current.pk)
        running = stale.filter(status=MeterReportStatus.RUNNING).update(
            status=MeterReportStatus.FAILED, detail=ABANDONED_DETAIL, finished_at=now
        )
        queued = stale.filter(status=MeterReportStatus.QUEUED).update(
            status=MeterReportStatus.FAILED,
            detail=ABANDONED_QUEUED_DETAIL.format(report=current.pk),
            finished_at=now,
        )
        return running + queued


def requeue_failed(*, aggregates) -> tuple[int, list[str]]:
    """Queue ``failed`` aggregates again (the admin's "Retry" action): ``pending``,
    attempts 0, no backoff, the same identifier and current idempotency key, for the
    next run. Stripe deduplicates that identifier only for a rolling period of at least
    24 hours after the first send, so an aggregate first sent before
    ``resend_cutoff()`` is refused (reconcile it against Stripe's meter event summaries
    instead, ``resolve_reconciliation``); one never sent (``first_sent_at`` null, e.g.
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


def resolve_reconciliation(*, aggregate: UsageAggregate, stripe_has_it: bool, by: str) -> bool:
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
        posted = _acknowledge(
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


_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-report")


def queue_report(*, organization, requested_by=None) -> MeterReport:
    """Queue a report run of ``organization`` on this process's reporting worker, or
    return the one already in progress.

    If a report of the organization is in progress (``_unfinished_reports`` with
    ``stale=False``: ``queued`` less than ``ABANDONED_AFTER`` ago, or ``running`` and
    begun less than that ago), the newest is returned and nothing is queued (one run
    does the work; concurrent calls are serialized by a transaction-level advisory lock,
    ``QUEUE_LOCK``, held until the caller's transaction ends, so two POSTs cannot both
    queue). Otherwise a ``queued`` ``MeterReport`` is created and handed, once the
    caller's transaction has committed (``transaction.on_commit``), to the worker: one
    background thread (a ``ThreadPoolExecutor`` with one worker, so runs of one process
    are sequential), never the request thread. Returns the report at once;
    ``GET report-usage/<id>/`` follows it.

    The worker (``_run_queued_report``) runs ``report_usage`` for the report on its own
    database connection (closed when the run ends), which claims it (``queued ->
    running``, ``started_at``, a conditional update: a report marked abandoned meanwhile
    is not run) and takes the organization's advisory lock on that connection (held by
    another run: the report becomes ``skipped``); the worker marks the report ``failed``
    with the error text on ANY exception, and never raises into the request.

    In-process queueing, no broker: a report whose process dies before or during its
    run stays ``queued``/``running`` until a later run of the organization, holding its
    lock, marks it ``failed`` ("abandoned", ``ABANDONED_AFTER`` after it was queued or
    began; see ``_abandon_stale_reports`` for the exact rule). Nothing is lost or sent
    twice, because the work itself lives in the database, not in the queue: the events stay
    ``pending`` (not yet aggregated, or linked to a ``pending`` outbox row committed
    before any send), and the next run, ``manage.py report_usage`` or another POST,
    picks up exactly those: unaggregated events go into new aggregates, and pending
    aggregates are sent with their unchanged identifier and key (Stripe replays or
    deduplicates them within ``resend_window()``; past it they are flagged for
    reconciliation, never resent).
    """
    key = _advisory_key(QUEUE_LOCK, organization.pk)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        in_progress = _unfinished_reports(organization, stale=False).order_by("-created_at").first()
        if in_progress is not None:
            return in_progress
        report = MeterReport.objects.create(
            organization=organization, requested_by=requested_by, until=current_hour()
        )
    report_id = report.pk

    def enqueue():
        try:
            _worker.submit(_run_queued_report, report_id, organization, requested_by)
        except Exception:  # e.g. the interpreter is shutting down: the report stays queued
            logger.exception("usage report %s could not be queued; it stays queued", report_id)

    transaction.on_commit(enqueue)
    return report


def _run_queued_report(report_id, organization, requested_by) -> None:
    """The worker thread's job for one queued report (see ``queue_report``). Never raises."""
    try:
        with tenant_context(organization):
            report = MeterReport.objects.for_organization(organization).get(pk=report_id)
            organization = type(organization).objects.get(pk=organization.pk)  # fresh copy
        # report_usage claims it (queued -> running) or, if it is no longer queued, does nothing
        report_usage(organization=organization, report=report, requested_by=requested_by)
    except Exception as exc:
        # report_usage recorded it already; this records an error raised before it
        logger.exception("usage report %s failed", report_id)
        _fail_report(organization, report_id, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _fail_report(organization, report_id, detail: str) -> None:
    """THE failure path of a report run: mark the report ``failed`` with ``detail``
    (first 2,000 characters) and ``finished_at``, if it is still ``queued`` or
    ``running`` (a conditional update, so a second call changes nothing). Never raises:
    a failure to record it is logged (the caller re-raises or logs the original error).
    On a connection outside any transaction (the worker's), an unusable connection is
    replaced first."""
    try:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        with tenant_context(organization):
            MeterReport.objects.for_organization(organization).filter(
                pk=report_id, status__in=[MeterReportStatus.QUEUED, MeterReportStatus.RUNNING]
            ).update(
                status=MeterReportStatus.FAILED, detail=detail[:2000], finished_at=timezone.now()
            )
    except Exception:
        logger.exception("usage report %s: could not record its failure", report_id)


def wait_for_queued_reports(timeout: float = 60) -> None:
    """Block until every report queued in this process so far has run (tests, shutdown).

    Raises:
        concurrent.futures.TimeoutError: still running after ``timeout`` seconds.
    """
    _worker.submit(lambda: None).result(timeout=timeout)


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


def _finish(report: MeterReport, status: str, detail: str) -> bool:
    """End this run's report: ``running -> status`` with ``detail``, ``finished_at`` and
    the run's counts, by a conditional update (``WHERE status = 'running'``). Returns
    ``True`` when it was written (``report`` updated in memory). ``False`` when the
    report was no longer ``running`` (marked failed, "abandoned", meanwhile): nothing is
    overwritten, a warning with what this run would have written is logged, and
    ``report`` is refreshed from the database. Runs in the caller's tenant context."""
    changes = {
        "status": status,
        "detail": detail,
        "finished_at": timezone.now(),
        "aggregates_created": report.aggregates_created,
        "aggregates_sent": report.aggregates_sent,
        "aggregates_failed": report.aggregates_failed,
        "events_posted": report.events_posted,
    }
    running = MeterReport.objects.for_organization(report.organization_id).filter(
        pk=report.pk, status=MeterReportStatus.RUNNING
    )
    if running.update(**changes):
        for name, value in changes.items():
            setattr(report, name, value)
        return True
    report.refresh_from_db()
    logger.warning(
        "usage report %s was marked %s meanwhile (%s); not overwritten with %s (%s): "
        "%s aggregate(s) created, %s sent, %s failed, %s event(s) posted",
        report.pk,
        report.status,
        report.detail,
        status,
        detail,
        changes["aggregates_created"],
        changes["aggregates_sent"],
        changes["aggregates_failed"],
        changes["events_posted"],
    )
    return False
