"""The life of a ``MeterReport`` (one reporting run of one organization): claimed, finished
or failed.

A report's status moves only by conditional updates: ``queued -> running`` when its run
begins (``report_claim``; a resumed job also re-claims its own ``running`` report),
``running -> <final>`` when it ends (``report_finish``), and ``queued``/``running`` ->
``failed`` on an error (``report_fail``), so a report that reached a final status is
never turned back. A report whose run was killed is no longer guessed "abandoned" after
a while: a job worker's death is seen by the job engine (stalled-job retry,
``billing.tasks``), which runs the same job again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import connection
from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)


def report_claim(
    report: MeterReport, *, until: datetime, dry_run: bool, resume: bool = False
) -> bool:
    """Claim ``report`` for this run: ``queued -> running`` with ``started_at`` now (and
    ``until``, ``dry_run``), by a conditional update; with ``resume`` also ``running ->
    running`` (the report's own job, run again after its worker died: nothing else runs a
    job's report). Returns ``True`` when this run claimed it (``report`` updated in
    memory), ``False`` when it was in no such status (``report`` refreshed from the
    database). Runs in the caller's tenant context."""
    now = timezone.now()
    claimable = [MeterReportStatus.QUEUED] + ([MeterReportStatus.RUNNING] if resume else [])
    claimed = (
        MeterReport.objects.for_organization(report.organization_id)
        .filter(pk=report.pk, status__in=claimable)
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


def report_finish(report: MeterReport, status: str, detail: str) -> bool:
    """End this run's report: ``running -> status`` with ``detail``, ``finished_at`` and
    the run's counts, by a conditional update (``WHERE status = 'running'``). Returns
    ``True`` when it was written (``report`` updated in memory). ``False`` when the
    report was no longer ``running`` (failed or finished meanwhile): nothing is
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


def report_fail(organization, report_id, detail: str) -> None:
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
