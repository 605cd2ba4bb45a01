"""The life of a ``MeterReport`` (one reporting run of one organization): claimed, finished,
failed, or marked abandoned.

A report's status moves only by conditional updates: ``queued -> running`` when its run
begins (``claim_report``), ``running -> <final>`` when it ends (``finish_report``), and
``queued``/``running`` -> ``failed`` on an error (``fail_report``), so a report marked
``failed`` ("abandoned") meanwhile stays so. A run that holds the organization's lock
(``billing.reporting.locks``) marks the organization's other reports abandoned
(``abandon_stale_reports``): ``running`` ones whose run began (``started_at``) more than
``ABANDONED_AFTER`` (1 hour) ago, and ``queued`` ones created more than that ago.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Case, F, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)

#: How long a report counts as in progress (``unfinished_reports``): a ``running`` one
#: since its ``started_at``, a ``queued`` one since its ``created_at``. Within it a POST
#: returns the report in progress instead of queuing another
#: (``billing.reporting.queue.queue_report``); past it a run holding the organization's
#: lock marks the report abandoned (``abandon_stale_reports``).
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


def claim_report(report: MeterReport, *, until: datetime, dry_run: bool) -> bool:
    """Claim ``report`` for this run: ``queued -> running`` with ``started_at`` now (and
    ``until``, ``dry_run``), by a conditional update. Returns ``True`` when this run
    claimed it (``report`` updated in memory), ``False`` when it was not ``queued``
    (``report`` refreshed from the database). Runs in the caller's tenant context."""
    now = timezone.now()
    claimed = MeterReport.objects.filter(pk=report.pk, status=MeterReportStatus.QUEUED).update(
        status=MeterReportStatus.RUNNING, started_at=now, until=until, dry_run=dry_run
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


def finish_report(report: MeterReport, status: str, detail: str) -> bool:
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
    if MeterReport.objects.filter(pk=report.pk, status=MeterReportStatus.RUNNING).update(**changes):
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


def fail_report(organization, report_id, detail: str) -> None:
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
            MeterReport.objects.filter(
                pk=report_id, status__in=[MeterReportStatus.QUEUED, MeterReportStatus.RUNNING]
            ).update(
                status=MeterReportStatus.FAILED, detail=detail[:2000], finished_at=timezone.now()
            )
    except Exception:
        logger.exception("usage report %s: could not record its failure", report_id)


def unfinished_reports(organization, *, stale: bool, now: datetime | None = None):
    """``organization``'s reports still ``queued`` or ``running``, split by
    ``ABANDONED_AFTER`` in one place (a ``MeterReport`` queryset, for
    ``billing.reporting.queue.queue_report`` and ``abandon_stale_reports``).

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


def abandon_stale_reports(organization, *, current: MeterReport) -> int:
    """Mark ``organization``'s stale unfinished reports (``unfinished_reports``), other
    than ``current``, ``failed`` (``finished_at`` now). Called only by a run that holds
    the organization's reporting lock (``billing.reporting.locks.organization_lock``),
    which a run keeps for all of its work. The rule, precisely:

    * ``running`` and its run began (``started_at``) more than ``ABANDONED_AFTER`` ago:
      detail ``ABANDONED_DETAIL``. A live run holds the lock from moments after it
      begins (``billing.reporting.runs.report_usage``: claim, then lock) to its end; only
      that step, and the dry-run and no-Stripe-customer paths that end at once, run
      without it. This run holds it, so no one is running that report: its process
      stopped. (A report that waited long in a worker's queue is not old here: its age
      counts from ``started_at``.)
    * ``queued`` and created more than ``ABANDONED_AFTER`` ago: detail
      ``ABANDONED_QUEUED_DETAIL``. Either its process stopped, or it is still waiting
      in that process's worker (one thread, runs of all organizations in turn); no
      process can tell another's queue, so the detail names both. Either way this run
      reports the organization's pending usage now; if its worker reaches it later, the
      claim ``queued -> running`` changes nothing and it is not run (``report_usage``).

    Their work is not lost: it lives in the database (pending events and outbox rows,
    see ``billing.reporting.queue.queue_report``) and this run picks it up. Returns how
    many were marked."""
    with tenant_context(organization):
        now = timezone.now()
        stale = unfinished_reports(organization, stale=True, now=now).exclude(pk=current.pk)
        running = stale.filter(status=MeterReportStatus.RUNNING).update(
            status=MeterReportStatus.FAILED, detail=ABANDONED_DETAIL, finished_at=now
        )
        queued = stale.filter(status=MeterReportStatus.QUEUED).update(
            status=MeterReportStatus.FAILED,
            detail=ABANDONED_QUEUED_DETAIL.format(report=current.pk),
            finished_at=now,
        )
        return running + queued
