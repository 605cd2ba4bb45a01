"""Housekeeping jobs: the daily purge of finished jobs, and the periodic schedule."""

import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from billing.models import IdempotencyKey
from billing.tests.test_idempotency import stored_key
from goldleaves import housekeeping
from tenancy.tests.jobs import run_jobs
from tenancy.tokens import RefreshToken, refresh_tokens_purge_expired

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

    assert housekeeping.purge(timestamp=0)["finished jobs"] == 1
    assert set(ProcrastinateJob.objects.values_list("id", flat=True)) == {
        recent_failed,  # finished 6 days ago: kept
        old_waiting,  # never finished: kept, however old
    }
    assert not ProcrastinateEvent.objects.filter(job_id=old_failed).exists()
    assert housekeeping.purge(timestamp=0)["finished jobs"] == 0


def test_purge_deletes_expired_idempotency_keys_and_refresh_tokens_of_every_tenant(
    org, outsider_org, owner
):
    now = timezone.now()
    IdempotencyKey.objects.bulk_create(
        stored_key(o, f"k{i}", now + timedelta(hours=-1 if i < 3 else 1))
        for o in (org, outsider_org)
        for i in range(5)
    )
    expired = RefreshToken.for_user(owner)
    OutstandingToken.objects.filter(jti=expired["jti"]).update(expires_at=now - timedelta(days=1))
    expired.blacklist()
    live = RefreshToken.for_user(owner)

    done = housekeeping.purge(timestamp=0)

    assert done == {"finished jobs": 0, "expired idempotency keys": 6, "expired refresh tokens": 1}
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == ["k3", "k3", "k4", "k4"]
    assert list(OutstandingToken.objects.values_list("jti", flat=True)) == [live["jti"]]
    assert not BlacklistedToken.objects.exists()
    assert housekeeping.purge(timestamp=0)["expired refresh tokens"] == 0


def test_refresh_token_purge_works_in_batches(owner):
    now = timezone.now()
    for _ in range(5):
        RefreshToken.for_user(owner)
    OutstandingToken.objects.update(expires_at=now - timedelta(seconds=1))
    assert refresh_tokens_purge_expired(now=now, batch_size=2) == 5
    assert not OutstandingToken.objects.exists()


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
