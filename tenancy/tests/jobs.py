"""Test helpers for background jobs: run deferred jobs in this test's transaction, or start
real ``manage.py procrastinate worker`` processes on the committed test database.

``run_jobs`` is for ordinary (non-transactional) tests: the jobs a test deferred are only
visible on its own connection, inside its wrapping transaction, so it plays the worker's
part there, through procrastinate's own SQL functions (register a worker, fetch with
``FOR UPDATE SKIP LOCKED``, finish or retry), on the app role's connection. Only the
task's function runs in this thread instead of a worker thread.

``WorkerProcess`` is for ``transaction=True`` tests: a real worker, as production runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import attr
from asgiref.sync import async_to_sync
from django.conf import settings
from procrastinate.contrib.django import app
from procrastinate.exceptions import TaskNotFound
from procrastinate.jobs import Job, Status

from tenancy.tests.dburl import subprocess_database_url

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RanJob:
    """One job ``run_jobs`` ran: the job as fetched, ``outcome`` (``"succeeded"``,
    ``"failed"`` or ``"retry"``), and the task's return value or the exception it raised."""

    job: Job
    outcome: str
    result: object = None
    error: BaseException | None = None


class ManualWorker:
    """A worker played by the test, on its own connection (procrastinate's SQL functions
    through the app's Django connector, so inside the test's transaction): ``take`` fetches
    the next due job (it becomes ``doing``, owned by this worker), ``finish`` records its
    end. Jobs come back with their arguments as a dict (Django's connection leaves
    ``jsonb`` as text)."""

    def __init__(self):
        self.manager = app.job_manager
        self.id = async_to_sync(self.manager.register_worker)()

    def take(self, queues: list[str] | None = None) -> Job | None:
        job = async_to_sync(self.manager.fetch_job)(queues=queues, worker_id=self.id)
        if job is not None and isinstance(job.task_kwargs, str):
            job = attr.evolve(job, task_kwargs=json.loads(job.task_kwargs))
        return job

    def finish(self, job: Job, status: Status = Status.SUCCEEDED) -> None:
        async_to_sync(self.manager.finish_job)(job=job, status=status, delete_job=False)

    def retry(self, job: Job, retry_at) -> None:
        async_to_sync(self.manager.retry_job)(job=job, retry_at=retry_at)

    def unregister(self) -> None:
        async_to_sync(self.manager.unregister_worker)(self.id)


def run_jobs(*, queues: list[str] | None = None, limit: int = 100) -> list[RanJob]:
    """Run every job that is due in ``queues`` (default: all), one after the other, as a
    worker would (``ManualWorker``), on this thread's connection (so inside the test's
    transaction): a job that raises is retried per its task's retry strategy (``"retry"``:
    back to ``todo``, scheduled later, so not run again here) or failed; an unknown task
    fails its job. Returns what ran, in order."""
    app.perform_import_paths()
    worker = ManualWorker()
    ran: list[RanJob] = []
    try:
        for _ in range(limit):
            job = worker.take(queues)
            if job is None:
                break
            task = app.tasks.get(job.task_name)
            if task is None:  # as the worker does: an unknown task fails the job
                worker.finish(job, Status.FAILED)
                ran.append(RanJob(job, "failed", error=TaskNotFound(job.task_name)))
                continue
            try:
                result = task(**job.task_kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded, as the worker records it
                retry = task.get_retry_exception(exception=exc, job=job)
                if retry is not None:
                    worker.retry(job, retry.retry_decision.retry_at)
                else:
                    worker.finish(job, Status.FAILED)
                ran.append(RanJob(job, "retry" if retry else "failed", error=exc))
                continue
            worker.finish(job)
            ran.append(RanJob(job, "succeeded", result=result))
    finally:
        worker.unregister()
    return ran


def make_jobs_due() -> None:
    """Make every waiting job due now (``scheduled_at`` = the database's ``now()``): a
    retry is scheduled by the application's clock, later than ``now()`` inside a test's
    wrapping transaction (fixed at its start), and a backoff need not be waited out."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE status = 'todo'")


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.1, what: str = ""):
    """Call ``predicate()`` until it returns something truthy, and return that; raise
    ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class WorkerProcess:
    """``python manage.py procrastinate worker`` in a subprocess, on the test database (the
    suite's login role; the worker switches to the app role itself), with a short heartbeat
    so that a killed worker looks stalled within seconds. Stop it with ``stop()`` (SIGTERM:
    graceful) or ``kill()`` (SIGKILL); always call one (use it as a context manager)."""

    def __init__(
        self,
        *args: str,
        heartbeat: float = 0.5,
        stalled_after: float = 2.0,
        env: dict | None = None,
    ):
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
            "DATABASE_URL": subprocess_database_url(),
            "SECRET_KEY": settings.SECRET_KEY,
            "RLS_ENABLED": "true" if settings.RLS_ENABLED else "false",
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "JOB_HEARTBEAT_SECONDS": str(heartbeat),
            "JOB_STALLED_AFTER_SECONDS": str(stalled_after),
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        # a file, not a pipe (a full pipe would block the worker); read back through a
        # handle of its own, whose offset the writer does not share
        self._log_file = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "procrastinate",
                "worker",
                "--fetch-job-polling-interval",
                "0.2",
                *args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM (a graceful stop: running jobs finish), wait, and return its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> str:
        """SIGKILL: the worker dies at once, mid-job; returns its log."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self._reap(30.0)

    def log(self) -> str:
        """Everything the worker printed so far (stdout and stderr)."""
        return Path(self._log_file.name).read_text(errors="replace")

    def _reap(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()
        self._log_file.close()  # deletes it
