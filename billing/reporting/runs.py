"""One organization's reporting run (``report_usage``): usage reporting to Stripe that
never double-bills and never swallows late usage.

The flow, in the organization's tenant context:

1. **Outbox** (one transaction, ``billing.reporting.outbox``): pending billing events
   before ``until`` that have a Stripe meter and are not in an aggregate yet become
   ``UsageAggregate`` rows, one per (meter, UTC hour, sequence), with their events linked
   to them. The rows are committed *before* anything is sent.
2. **Send** (``billing.reporting.send``): every pending aggregate of the organization (new
   or left over by an earlier run) is sent as one Stripe meter event with the
   aggregate's identifier, always the same, and an ``Idempotency-Key``; an aggregate
   first sent longer ago than the resend window is flagged for reconciliation instead
   (``billing.reporting.reconciliation``).
3. **Acknowledge** (one transaction, ``billing.reporting.outbox.acknowledge``): the
   aggregate moves ``pending -> sent`` and its events ``pending -> posted``, both by
   conditional updates, so a run that repeats the step changes nothing.

A crash between 2 and 3 leaves the aggregate pending; the next run sends the same
identifier with the same key (Stripe replays the answer or rejects the duplicate
identifier: counted once) and then acknowledges it.

Without ``STRIPE_API_KEY`` reporting is a dry run: it says what it would send and
changes nothing.

Runs of one organization never overlap: a run holds the organization's advisory lock
(``billing.reporting.locks``) for all its work, and a run that finds it held is recorded
as ``skipped`` (the run holding it does the work); the job engine also runs at most one
report job per organization at a time (its procrastinate lock, ``billing.tasks``). The
report's own status moves by conditional updates only (``billing.reporting.lifecycle``).
``manage.py report_usage`` calls ``report_usage`` directly; ``POST
/api/v1/billing/report-usage/`` and the hourly schedule queue it as a job
(``billing.reporting.queue``, ``billing.tasks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus, UsageAggregate, UsageAggregateStatus
from billing.reporting.identifiers import current_hour
from billing.reporting.lifecycle import report_claim, report_fail, report_finish
from billing.reporting.locks import ReportingError, organization_lock
from billing.reporting.outbox import acknowledge, aggregates_build
from billing.reporting.send import NEEDS_RECONCILIATION, SENT, aggregate_send
from billing.reporting.stripe_api import stripe_client
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)


@dataclass
class ReportResult:
    """What one organization's run did (also stored on its ``MeterReport``)."""

    report: MeterReport
    planned: list[dict] = field(default_factory=list)  # dry run: what would be sent
    lines: list[str] = field(default_factory=list)  # progress lines for the command


def report_usage(
    *,
    organization,
    until: datetime | None = None,
    dry_run: bool = False,
    requested_by=None,
    report: MeterReport | None = None,
    resume: bool = False,
    client_factory: Callable = stripe_client,
) -> ReportResult:
    """Report ``organization``'s pending usage before ``until`` (default: the start of
    the current UTC hour) to Stripe; see the module doc for the steps and guarantees.

    Dry run when ``dry_run`` or when ``STRIPE_API_KEY`` is empty: nothing is written
    and nothing is marked posted; ``ReportResult.planned`` lists what would be sent.
    Report status ``skipped`` (``detail`` says which): the organization has no
    ``stripe_customer_id``, or another run holds its reporting lock (that run sends the
    pending usage; nothing is lost).

    Without ``report`` a ``running`` report is created (``started_at`` now). With ``report``
    (the job's, see ``billing.tasks``: a report of this organization) the run claims it by
    a conditional update ``queued -> running`` (``report_claim``: ``started_at`` now; with
    ``resume``, the job's own ``running`` report too, left by a killed worker) and does
    nothing else if that changes no row (the report already finished: a warning is
    logged). Once it holds the organization's lock it checks again that the report is
    still ``running`` and stops if not. It ends the report by a conditional update
    ``running -> <final status>`` (``report_finish``), so a report that failed meanwhile is
    never turned back. Returns the result with the report as stored (refreshed from the
    database when it was not this run's to change).

    Raises:
        Exception: anything unexpected while building or sending (a database error
            included); the report is saved as ``failed`` with the exception in
            ``detail`` first (``report_fail``), then it propagates.
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
        elif not report_claim(report, until=until, dry_run=dry_run, resume=resume):
            logger.warning(
                "usage report %s is no longer queued (%s: %s): not run",
                report.pk,
                report.status,
                report.detail,
            )
            return ReportResult(report=report)
        result = ReportResult(report=report)
        if not organization.stripe_customer_id:
            report_finish(
                report, MeterReportStatus.SKIPPED, "no Stripe customer (stripe_customer_id)"
            )
            return result
        if dry_run:
            _plan(organization, until, result)
            why = "dry run" if settings.STRIPE_API_KEY else "dry run: STRIPE_API_KEY is not set"
            report_finish(report, MeterReportStatus.DRY_RUN, why)
            return result

    try:
        with organization_lock(organization):
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
            _build_and_send(organization, until, report, result, client_factory)
    except ReportingError as exc:
        with tenant_context(organization):
            report_finish(
                report,
                MeterReportStatus.SKIPPED,
                f"{exc}: this run was skipped; the run holding the lock sends the pending usage",
            )
        return result
    except Exception as exc:
        report_fail(organization, report.pk, f"{type(exc).__name__}: {exc}")
        raise
    with tenant_context(organization):
        if report.aggregates_failed and report.aggregates_sent:
            status = MeterReportStatus.PARTIAL
        elif report.aggregates_failed:
            status = MeterReportStatus.FAILED
        else:
            status = MeterReportStatus.SUCCEEDED
        report_finish(report, status, "")
    return result


def _build_and_send(organization, until, report, result, client_factory) -> None:
    """Steps 1-3 for one organization (the caller holds its reporting lock)."""
    # Step 1, committed before anything is sent.
    with tenant_context(organization):
        report.aggregates_created = aggregates_build(
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
        outcome = aggregate_send(client, aggregate, organization=organization)
        if outcome == SENT:
            with tenant_context(organization):
                report.events_posted += acknowledge(aggregate) or 0
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


def _plan(organization, until: datetime, result: ReportResult) -> None:
    """Dry run: what step 1 and 2 would send, computed without writing."""
    with transaction.atomic():
        sid = transaction.savepoint()
        aggregates_build(organization=organization, until=until, report=None)
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
