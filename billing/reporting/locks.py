"""The organization's PostgreSQL advisory locks for usage reporting
(PostgreSQL 15 manual, 13.3.5 "Advisory Locks").

* ``RUN_LOCK``: a session lock a run holds for all its work (``organization_lock``), so
  runs of one organization never overlap and two runs never send for the same customer
  at once; a run that finds it held is recorded as ``skipped`` (the holder does the work).
* ``QUEUE_LOCK``: a transaction lock that serializes ``billing.reporting.queue.report_queue``,
  so two POSTs cannot both queue a report.
"""

from __future__ import annotations

import contextlib
import hashlib

from django.db import connection

#: Namespaces of the organization's PostgreSQL advisory locks (``advisory_key``).
RUN_LOCK = "usage-report"
QUEUE_LOCK = "usage-report-queue"


class ReportingError(RuntimeError):
    """Another run holds the organization's reporting lock (``organization_lock``);
    ``billing.reporting.runs.report_usage`` records its report as ``skipped`` and does not
    raise it."""


def advisory_key(purpose: str, organization_id) -> int:
    """The PostgreSQL advisory lock key (a ``bigint``) of ``organization_id`` (a UUID or any
    value with a stable ``str``) for ``purpose``: ``RUN_LOCK`` (the session lock a run holds
    for all its work, ``organization_lock``) or ``QUEUE_LOCK`` (the transaction lock that
    serializes ``billing.reporting.queue.report_queue``). Different purposes give different
    keys, so a POST never waits for a run in progress. The first 60 bits of SHA-256 of
    ``"<purpose>:<organization_id>"``: stable across processes and Python versions (unlike
    ``hash()``), always positive and within ``bigint``
    (PostgreSQL 15 manual, 9.28.10 "Advisory Lock Functions" takes
    one ``bigint`` key)."""
    return int(hashlib.sha256(f"{purpose}:{organization_id}".encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def organization_lock(organization):
    """Hold a session-level PostgreSQL advisory lock for this organization's reporting
    (PostgreSQL 15 manual, 13.3.5 "Advisory Locks"), so two runs
    never send for the same customer at once. Taken on the calling thread's own connection
    (``django.db.connection`` is per thread: each job a worker runs has its own).
    Session-level, so it needs a direct connection (not PgBouncer in transaction mode,
    see DEPLOY.md).

    Raises:
        ReportingError: another run holds it.
    """
    key = advisory_key(RUN_LOCK, organization.pk)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        if not cursor.fetchone()[0]:
            raise ReportingError(f"another usage report for {organization.slug} is running")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
