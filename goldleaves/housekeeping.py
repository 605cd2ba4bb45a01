"""Housekeeping jobs: periodic procrastinate tasks, so no cron line is needed.

Every worker runs procrastinate's periodic deferrer, and the database defers each period
once however many workers run (a unique row per task and period in
``procrastinate_periodic_defers``; procrastinate docs, "Launch a task periodically").

* ``purge`` (daily, 03:17 UTC): every purge of ``PURGES`` in turn. To add one, write a
  function ``(now: datetime) -> int`` (rows deleted; batched, each batch its own
  transaction; tenant rows only through ``tenant_context`` or the explicit
  ``cross_tenant`` path) and add it to ``PURGES`` under a label.
* ``retry_stalled_jobs`` (every minute): jobs left ``doing`` by a worker that stopped
  sending heartbeats (killed, host lost) go back to ``todo`` for another worker
  (procrastinate docs, "Retry stalled jobs").

These live in the project package because a purge may need any app (billing, cases); it
imports them, never the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.jobs import Status

from billing.idempotency.purge import idempotency_key_purge_expired
from tenancy.tokens import refresh_tokens_purge_expired

logger = logging.getLogger("goldleaves.housekeeping")

#: The queue of housekeeping jobs.
HOUSEKEEPING_QUEUE = "housekeeping"
#: Rows deleted per statement (and per transaction) by a purge.
PURGE_BATCH = 5_000
#: The states a job never leaves (procrastinate's ``procrastinate_job_status``).
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "aborted")

_PURGE_JOBS_SQL = """
DELETE FROM procrastinate_jobs WHERE id IN (
    SELECT j.id FROM procrastinate_jobs j
    WHERE j.status = ANY(%(statuses)s::procrastinate_job_status[])
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id AND e.at >= %(cutoff)s)
    LIMIT %(batch)s)
"""


def purge_finished_jobs(now: datetime) -> int:
    """Delete the jobs that finished (``FINISHED_STATUSES``) more than
    ``settings.JOB_RETENTION_DAYS`` days before ``now`` (UTC), i.e. whose latest event is
    older, with their events (``ON DELETE CASCADE``; procrastinate's own trigger unlinks
    ``procrastinate_periodic_defers``). In batches of ``PURGE_BATCH``, one transaction
    each. Waiting and running jobs are never touched. Returns the number of jobs deleted."""
    cutoff = now - timedelta(days=settings.JOB_RETENTION_DAYS)
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                _PURGE_JOBS_SQL,
                {"statuses": list(FINISHED_STATUSES), "cutoff": cutoff, "batch": PURGE_BATCH},
            )
            count = cursor.rowcount
        deleted += count
        if count < PURGE_BATCH:
            return deleted


#: The purges ``purge`` runs, in order: label -> function ``(now) -> rows deleted``.
PURGES: dict[str, Callable[[datetime], int]] = {
    "finished jobs": purge_finished_jobs,
    "expired idempotency keys": lambda now: idempotency_key_purge_expired(
        now=now, batch_size=PURGE_BATCH
    ),
    "expired refresh tokens": lambda now: refresh_tokens_purge_expired(
        now=now, batch_size=PURGE_BATCH
    ),
}


@app.periodic(cron="17 3 * * *", periodic_id="daily")
@app.task(
    name="housekeeping.purge",
    queue=HOUSEKEEPING_QUEUE,
    queueing_lock="housekeeping.purge",
)
def purge(timestamp: int) -> dict[str, int]:
    """Periodic job (daily at 03:17 UTC; ``timestamp``: the Unix time it was scheduled
    for): run every purge of ``PURGES`` and return ``{label: rows deleted}``. A failing
    purge is logged with its traceback and does not stop the others; the job then fails
    (visible in the admin and ``/api/v1/billing/health/``) after all have run."""
    now = timezone.now()
    done: dict[str, int] = {}
    failed = []
    for label, purge_one in PURGES.items():
        try:
            done[label] = purge_one(now)
        except Exception:
            logger.exception("purge of %s failed", label)
            failed.append(label)
            continue
        logger.info("purged %s %s", done[label], label)
    if failed:
        raise RuntimeError(f"purge failed for: {', '.join(failed)} (done: {done})")
    return done


@app.periodic(cron="* * * * *", periodic_id="every-minute")
@app.task(
    name="housekeeping.retry_stalled_jobs",
    queue=HOUSEKEEPING_QUEUE,
    queueing_lock="housekeeping.retry_stalled_jobs",
    pass_context=True,
)
async def retry_stalled_jobs(context, timestamp: int) -> int:
    """Periodic job (every minute): find the jobs still ``doing`` whose worker sent no
    heartbeat for ``settings.JOB_STALLED_AFTER_SECONDS`` (it was killed, or its host was
    lost; ``JobManager.get_stalled_jobs``) and put each back to ``todo`` for another worker
    (``retry_job``: ``attempts`` + 1). Every job is safe to run twice, so a job whose first
    run had committed its work runs again harmlessly. A job already retried
    ``settings.JOB_MAX_RETRIES`` times is failed instead (it may be what kills its workers).
    Returns how many jobs were put back."""
    manager = context.app.job_manager
    stalled = await manager.get_stalled_jobs(
        seconds_since_heartbeat=settings.JOB_STALLED_AFTER_SECONDS
    )
    retried = 0
    for job in stalled:
        if job.attempts >= settings.JOB_MAX_RETRIES:
            await manager.finish_job(job=job, status=Status.FAILED, delete_job=False)
            logger.error(
                "stalled job %s[%s] failed: %s attempts already",
                job.task_name,
                job.id,
                job.attempts,
            )
            continue
        await manager.retry_job(job=job)  # due at once
        retried += 1
        logger.warning("stalled job %s[%s] (its worker stopped): retried", job.task_name, job.id)
    return retried
