"""Housekeeping jobs: the daily purge of finished jobs, and the periodic schedule."""

import logging

import pytest
from django.db import connection
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob

from goldleaves import housekeeping
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db


def defer(name: str) -> int:
    return app.configure_task(name, allow_unknown=True).defer()


def age(job_id: int, days: float) -> None:
    """Move every event of the job ``days`` days into the past."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_events SET at = at - make_interval(secs => %s) WHERE job_id = %s",
            [days * 86400, job_id],
        )


def test_purge_deletes_finished_jobs_older_than_the_retention_only(settings):
    settings.JOB_RETENTION_DAYS = 7
    old_failed, recent_failed = defer("tests.gone"), defer("tests.gone")
    assert [ran.outcome for ran in run_jobs()] == ["failed", "failed"]  # unknown task
    old_waiting = defer("tests.waiting")
    for job_id in (old_failed, old_waiting):
        age(job_id, 8)
    age(recent_failed, 6)

    assert housekeeping.purge(timestamp=0) == {"finished jobs": 1}
    assert set(ProcrastinateJob.objects.values_list("id", flat=True)) == {
        recent_failed,  # finished 6 days ago: kept
        old_waiting,  # never finished: kept, however old
    }
    assert not ProcrastinateEvent.objects.filter(job_id=old_failed).exists()
    assert housekeeping.purge(timestamp=0) == {"finished jobs": 0}


def test_purge_works_in_batches(settings, monkeypatch):
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 2)
    settings.JOB_RETENTION_DAYS = 1
    ids = [defer("tests.gone") for _ in range(5)]
    run_jobs()
    for job_id in ids:
        age(job_id, 2)
    assert housekeeping.purge_finished_jobs(housekeeping.timezone.now()) == 5
    assert not ProcrastinateJob.objects.exists()


def test_a_failing_purge_does_not_stop_the_others_and_fails_the_job(monkeypatch, caplog):
    ran = []

    def broken(now):
        raise RuntimeError("disk on fire")

    def other(now):
        ran.append(now)
        return 3

    monkeypatch.setitem(housekeeping.PURGES, "broken things", broken)
    monkeypatch.setitem(housekeeping.PURGES, "other things", other)
    with caplog.at_level(logging.ERROR, logger="goldleaves.housekeeping"):
        with pytest.raises(RuntimeError, match="purge failed for: broken things"):
            housekeeping.purge(timestamp=0)
    assert len(ran) == 1
    assert "purge of broken things failed" in caplog.text


def test_the_schedule_needs_no_cron():
    app.perform_import_paths()
    schedule = {task.task.name: task.cron for task in app.periodic_registry.periodic_tasks.values()}
    assert schedule["housekeeping.purge"] == "17 3 * * *"
    assert schedule["housekeeping.retry_stalled_jobs"] == "* * * * *"
    assert app.tasks["housekeeping.purge"].queue == "housekeeping"
