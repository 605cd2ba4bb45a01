"""The entry point of ``POST /api/v1/billing/report-usage/``: a report run queued on this
process's in-process worker (``queue_report``), never run in the request.

In-process queueing, no broker: one background thread per process runs the queued reports
one after the other. What happens when that process dies is in ``queue_report``'s
docstring: nothing is lost or sent twice, because the work lives in the database.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, transaction

from billing.models import MeterReport
from billing.reporting.identifiers import current_hour
from billing.reporting.lifecycle import fail_report, unfinished_reports
from billing.reporting.locks import QUEUE_LOCK, advisory_key
from billing.reporting.runs import report_usage
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)

_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-report")


def queue_report(*, organization, requested_by=None) -> MeterReport:
    """Queue a report run of ``organization`` on this process's reporting worker, or
    return the one already in progress.

    If a report of the organization is in progress
    (``billing.reporting.lifecycle.unfinished_reports`` with ``stale=False``: ``queued``
    less than ``ABANDONED_AFTER`` ago, or ``running`` and begun less than that ago), the
    newest is returned and nothing is queued (one run does the work; concurrent calls are
    serialized by a transaction-level advisory lock, ``billing.reporting.locks.QUEUE_LOCK``,
    held until the caller's transaction ends, so two POSTs cannot both queue). Otherwise a
    ``queued`` ``MeterReport`` is created and handed, once the caller's transaction has
    committed (``transaction.on_commit``), to the worker: one background thread (a
    ``ThreadPoolExecutor`` with one worker, so runs of one process are sequential), never
    the request thread. Returns the report at once; ``GET report-usage/<id>/`` follows it.

    The worker (``_run_queued_report``) runs ``report_usage`` for the report on its own
    database connection (closed when the run ends), which claims it (``queued ->
    running``, ``started_at``, a conditional update: a report marked abandoned meanwhile
    is not run) and takes the organization's advisory lock on that connection (held by
    another run: the report becomes ``skipped``); the worker marks the report ``failed``
    with the error text on ANY exception, and never raises into the request.

    In-process queueing, no broker: a report whose process dies before or during its run
    stays ``queued``/``running`` until a later run of the organization, holding its lock,
    marks it ``failed`` ("abandoned", ``ABANDONED_AFTER`` after it was queued or began; see
    ``billing.reporting.lifecycle.abandon_stale_reports`` for the exact rule). Nothing is
    lost or sent twice, because the work itself lives in the database, not in the queue: the
    events stay ``pending`` (not yet aggregated, or linked to a ``pending`` outbox row
    committed before any send), and the next run, ``manage.py report_usage`` or another
    POST, picks up exactly those: unaggregated events go into new aggregates, and pending
    aggregates are sent with their unchanged identifier and key (Stripe replays or
    deduplicates them within ``billing.reporting.reconciliation.resend_window()``; past it
    they are flagged for reconciliation, never resent).
    """
    key = advisory_key(QUEUE_LOCK, organization.pk)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        in_progress = unfinished_reports(organization, stale=False).order_by("-created_at").first()
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
            report = MeterReport.objects.get(pk=report_id)
            organization = type(organization).objects.get(pk=organization.pk)  # fresh copy
        # report_usage claims it (queued -> running) or, if it is no longer queued, does nothing
        report_usage(organization=organization, report=report, requested_by=requested_by)
    except Exception as exc:
        # report_usage recorded it already; this records an error raised before it
        logger.exception("usage report %s failed", report_id)
        fail_report(organization, report_id, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def wait_for_queued_reports(timeout: float = 60) -> None:
    """Block until every report queued in this process so far has run (tests, shutdown).

    Raises:
        concurrent.futures.TimeoutError: still running after ``timeout`` seconds.
    """
    _worker.submit(lambda: None).result(timeout=timeout)
