"""Document processing by real job workers (``manage.py procrastinate worker`` processes)
on the committed test database: the upload's job commits with it, a worker processes and
bills it once, a job run twice bills once, and a worker killed mid-job loses nothing."""

import time

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from procrastinate.contrib.django import app
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob
from procrastinate.exceptions import AlreadyEnqueued

from billing.models import BillingEvent
from cases import services
from cases.models import Document
from cases.tasks import process_document
from cases.tests.factories import CaseFactory
from goldleaves.housekeeping import retry_stalled_jobs
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.dburl import owner_psycopg_connection
from tenancy.tests.factories import OrganizationFactory, member_of
from tenancy.tests.jobs import WorkerProcess, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def firm(settings, tmp_path):
    """(organization, owner, case), committed; uploads under ``tmp_path``."""
    settings.MEDIA_ROOT = str(tmp_path)
    with cross_tenant(reason="test set-up"):
        organization = OrganizationFactory(slug="worker-law")
        owner = member_of(organization, email="owner@worker.test")
        case = CaseFactory(organization=organization)
    return organization, owner, case


def upload(owner, case, name="notes.txt", content=b"one\fpage two\fthree"):
    response = bearer_client(owner).post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": SimpleUploadedFile(name, content, "text/plain")},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    assert response.json()["processing_status"] == "pending"
    return response.json()["id"]


def committed_jobs(document_id) -> list[tuple]:
    """``(task_name, status, args)`` of the document's jobs, read on ANOTHER connection:
    only committed rows."""
    with owner_psycopg_connection() as other:
        return other.execute(
            "SELECT task_name, status::text, args FROM procrastinate_jobs "
            "WHERE args->>'document_id' = %s ORDER BY id",
            [str(document_id)],
        ).fetchall()


def document_state(organization, document_id):
    with tenant_context(organization):
        document = Document.objects.for_organization(organization).get(pk=document_id)
        events = BillingEvent.objects.for_organization(organization).filter(
            event_name="doc.processed", resource_id=document_id
        )
        return document.processing_status, document.page_count, list(events)


def job_of(document_id) -> ProcrastinateJob:
    return ProcrastinateJob.objects.get(args__document_id=str(document_id))


def event_types(job) -> list[str]:
    return list(
        ProcrastinateEvent.objects.filter(job_id=job.pk)
        .order_by("id")
        .values_list("type", flat=True)
    )


def test_an_upload_commits_its_job_and_an_upload_that_rolls_back_leaves_none(firm):
    organization, owner, case = firm
    document_id = upload(owner, case)
    assert committed_jobs(document_id) == [
        (
            "cases.process_document",
            "todo",
            {"organization_id": str(organization.pk), "document_id": document_id},
        )
    ]

    class Boom(Exception):
        pass

    with pytest.raises(Boom), tenant_context(organization):
        document = services.document_create(
            organization=organization,
            acting_user=owner,
            case=case,
            file=SimpleUploadedFile("gone.txt", b"text\n", "text/plain"),
            request_id=None,
        )
        assert ProcrastinateJob.objects.filter(args__document_id=str(document.pk)).exists()
        raise Boom
    assert committed_jobs(document.pk) == []
    with cross_tenant(reason="test assertions"):
        assert not Document.objects.filter(pk=document.pk).exists()
    assert ProcrastinateJob.objects.count() == 1


def test_a_worker_processes_an_upload_and_bills_it_once(firm):
    organization, owner, case = firm
    with WorkerProcess("--queues", "documents") as worker:
        document_id = upload(owner, case)
        wait_until(
            lambda: document_state(organization, document_id)[0] == "processed",
            what="the worker to process the document",
        )
        log = worker.stop()
    status, pages, events = document_state(organization, document_id)
    assert (status, pages) == ("processed", 3)
    assert [(e.quantity, e.unit, e.organization_id) for e in events] == [
        (3, "page", organization.pk)
    ]
    job = job_of(document_id)
    assert (job.status, job.attempts) == ("succeeded", 1)  # one run
    assert "ended with status: Success" in log and "Result: processed" in log
    assert "Stopped worker" in log  # SIGTERM: a graceful stop


def _run_and_die(job_id) -> int:
    """What a worker does before it dies between committing a job's work and recording the
    job as done: register, fetch the job (it becomes ``doing``, owned by this worker), run
    the task (its transaction commits), and then no heartbeat ever again. Returns the dead
    worker's id."""
    manager = app.job_manager
    worker_id = async_to_sync(manager.register_worker)()
    job = async_to_sync(manager.fetch_job)(queues=["documents"], worker_id=worker_id)
    assert job.id == job_id
    assert process_document(**ProcrastinateJob.objects.get(pk=job_id).args) == "processed"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' "
            "WHERE id = %s",
            [worker_id],
        )
    return worker_id


def _defer_stalled_retry() -> None:
    """Defer the periodic ``retry_stalled_jobs`` now (instead of waiting for the minute);
    a worker's own periodic deferrer may have queued it already."""
    try:
        retry_stalled_jobs.defer(timestamp=int(time.time()))
    except AlreadyEnqueued:
        pass


def test_the_same_job_run_twice_bills_once(firm):
    """The job ran to its commit, then its worker died before recording it: the stalled
    job is retried and runs a second time, and finds the document already processed."""
    organization, owner, case = firm
    document_id = upload(owner, case)
    job = job_of(document_id)
    _run_and_die(job.pk)
    assert document_state(organization, document_id)[0] == "processed"
    assert job_of(document_id).status == "doing"  # never recorded as done

    with WorkerProcess("--queues", "documents,housekeeping") as worker:
        _defer_stalled_retry()
        wait_until(lambda: job_of(document_id).status == "succeeded", what="the retried job")
        log = worker.stop()
    job = job_of(document_id)
    assert job.attempts == 2  # run twice: the stalled run (retried), then the retry
    assert event_types(job).count("started") == 2 and "deferred_for_retry" in event_types(job)
    status, pages, events = document_state(organization, document_id)
    assert (status, pages, len(events)) == ("processed", 3, 1)  # billed once
    assert "(its worker stopped): retried" in log


def _blocked_backends(holder_pid: int) -> list[int]:
    with owner_psycopg_connection() as other:
        rows = other.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [holder_pid]
        ).fetchall()
    return [pid for (pid,) in rows]


def test_a_worker_killed_mid_job_is_retried_by_another_and_counted_once(firm):
    """Worker A takes the job and is SIGKILLed while inside it (blocked on the document's
    row lock, which the test holds); its transaction dies with its connection. Worker B,
    once A's heartbeat is stale, retries the stalled job and processes the document: one
    doc.processed event."""
    organization, owner, case = firm
    document_id = upload(owner, case)
    with owner_psycopg_connection() as holder:
        holder.autocommit = False
        holder.execute("SELECT 1 FROM cases_document WHERE id = %s FOR UPDATE", [document_id])
        holder_pid = holder.info.backend_pid
        with WorkerProcess("--queues", "documents") as worker_a:
            blocked = wait_until(
                lambda: _blocked_backends(holder_pid), what="worker A to block inside the job"
            )
            assert job_of(document_id).status == "doing"
            worker_a.kill()
        holder.rollback()  # A's backend gets the lock, finds its client gone, rolls back
        wait_until(
            lambda: not _blocked_backends(holder_pid) and blocked[0] not in _backend_pids(),
            what="worker A's backend to end",
        )
    assert document_state(organization, document_id)[:2] == ("pending", None)
    assert job_of(document_id).status == "doing"  # stalled: its worker is gone

    time.sleep(2.5)  # A's last heartbeat is now older than JOB_STALLED_AFTER_SECONDS (2)
    with WorkerProcess("--queues", "documents,housekeeping") as worker_b:
        _defer_stalled_retry()
        wait_until(
            lambda: document_state(organization, document_id)[0] == "processed",
            what="worker B to process the retried job",
        )
        wait_until(lambda: job_of(document_id).status == "succeeded", what="the job to finish")
        worker_b.stop()
    job = job_of(document_id)
    assert job.attempts == 2 and "deferred_for_retry" in event_types(job)
    status, pages, events = document_state(organization, document_id)
    assert (status, pages, len(events)) == ("processed", 3, 1)


def _backend_pids() -> list[int]:
    with owner_psycopg_connection() as other:
        return [pid for (pid,) in other.execute("SELECT pid FROM pg_stat_activity").fetchall()]


def test_the_worker_connects_as_the_app_role(settings):
    """The worker's own connection (fetching jobs, heartbeats) runs as the app role, as
    requests do: the grants on the job tables are what it relies on."""
    connector = app.connector.get_worker_connector().get_sync_connector()
    connector.open()
    try:
        row = connector.execute_query_one("SELECT current_user AS role")
    finally:
        connector.close()
    assert settings.DATABASE_APP_ROLE  # the suite runs requests as the app role
    assert row["role"] == settings.DATABASE_APP_ROLE
