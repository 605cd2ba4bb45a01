"""Queuing a report run as a job (``report_queue``): the path of ``POST
/api/v1/billing/report-usage/`` and of the hourly schedule (``billing.tasks``).

A run is the ``billing.report_usage`` job of procrastinate (``billing.tasks``), deferred in
the caller's transaction together with its ``queued`` ``MeterReport``, and run by a job
worker, never in the request. A report is *in progress* while its job is waiting
(``todo``) or running (``doing``): that is read from the job table, so a job that was
killed, cancelled or failed never blocks the next one, and no "abandoned after a while"
rule is needed (a stalled job is retried by the engine, see ``billing.tasks``).
"""

from __future__ import annotations

import logging

from django.db import connection, transaction
from procrastinate.contrib.django.models import ProcrastinateJob
from procrastinate.exceptions import AlreadyEnqueued

from billing.models import MeterReport
from billing.reporting.identifiers import current_hour
from billing.reporting.locks import QUEUE_LOCK, advisory_key
from billing.tasks import defer_report, report_usage

logger = logging.getLogger(__name__)


def report_in_progress(organization) -> MeterReport | None:
    """The ``MeterReport`` of ``organization``'s newest report job that is waiting or
    running (``procrastinate_jobs``: task ``billing.report_usage``, status ``todo`` or
    ``doing``, arguments naming the organization), or None. Runs in the caller's tenant
    context (the report is a tenant row)."""
    job = (
        ProcrastinateJob.objects.filter(
            task_name=report_usage.name,
            status__in=["todo", "doing"],
            args__organization_id=str(organization.pk),
        )
        .order_by("-id")
        .first()
    )
    if job is None or not job.args.get("report_id"):
        return None
    reports = MeterReport.objects.for_organization(organization)
    return reports.filter(pk=job.args["report_id"]).first()


def report_queue(*, organization, requested_by=None) -> tuple[MeterReport, bool]:
    """Queue a report run of ``organization``, or return the one in progress.

    In one transaction (a savepoint of the caller's, whose end releases the lock): take the
    organization's transaction-level advisory lock ``QUEUE_LOCK`` (two calls at once
    serialize here: the second waits until the first's transaction ends, then sees its
    job), then either return the report in progress (``report_in_progress``) or create a
    ``queued`` ``MeterReport`` and defer its ``billing.report_usage`` job
    (``billing.tasks.defer_report``, with the organization's lock and queueing lock). Both
    commit with the caller's transaction or not at all. Runs in the caller's tenant context.

    Returns:
        ``(report, created)``: the new ``queued`` report and True, or the report in
        progress (``queued`` or ``running``) and False.
    """
    key = advisory_key(QUEUE_LOCK, organization.pk)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        in_progress = report_in_progress(organization)
        if in_progress is not None:
            return in_progress, False
        try:
            with transaction.atomic():
                report = MeterReport.objects.create(
                    organization=organization, requested_by=requested_by, until=current_hour()
                )
                defer_report(organization=organization, report_id=report.pk)
        except AlreadyEnqueued:
            # a waiting job appeared without this lock (deferred by hand): it is the one
            waiting = report_in_progress(organization)
            if waiting is None:
                raise
            logger.warning("%s: report %s is already waiting", organization.slug, waiting.pk)
            return waiting, False
    return report, True
