"""``manage.py process_documents``: defers processing again for documents left pending."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from billing.models import BillingEvent
from cases import services
from cases.management.commands import process_documents
from cases.models import Document
from cases.tests.factories import CaseFactory
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def pending_document(organization, user, *, minutes_ago=11, text="one\fpage two\fthree"):
    """A document uploaded ``minutes_ago`` that is still pending and has no job any more
    (its job failed for good and was purged: the case the command is for)."""
    document = services.document_create(
        organization=organization,
        acting_user=user,
        case=CaseFactory(organization=organization),
        file=SimpleUploadedFile("notes.txt", text.encode(), "text/plain"),
        request_id=None,  # outside a request: no idempotency key
    )
    uploaded_at = timezone.now() - timedelta(minutes=minutes_ago)
    Document.objects.filter(pk=document.pk).update(uploaded_at=uploaded_at)
    drop_jobs(document)
    return document


def drop_jobs(document) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM procrastinate_jobs WHERE args->>'document_id' = %s", [str(document.pk)]
        )


def jobs_of(document):
    return ProcrastinateJob.objects.filter(args__document_id=str(document.pk))


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("process_documents", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def processed_events(document=None):
    events = BillingEvent.objects.filter(event_name="doc.processed")
    return events.filter(resource_id=document.pk) if document else events


def test_defers_an_old_pending_document_once_and_the_worker_bills_it_once(org, owner):
    old = pending_document(org, owner)
    recent = pending_document(org, owner, minutes_ago=0)
    out, err = run()
    assert "1 pending document(s)" in out
    job = jobs_of(old).get()
    assert (job.task_name, job.status, job.queue_name) == (
        "cases.process_document",
        "todo",
        "documents",
    )
    assert job.args == {"organization_id": str(org.pk), "document_id": str(old.pk)}
    assert f"[1/1] {old.pk} (acme-law, 'notes.txt'" in out
    assert f"deferred: job {job.pk}" in out
    assert "Done in" in out and "1 deferred, 0 already queued, 0 database errors." in out
    assert err == ""
    assert not jobs_of(recent).exists()

    out, _ = run()  # its job is waiting: a second run queues nothing more
    assert f"already has job {job.pk} (waiting)" in out
    assert "0 deferred, 1 already queued" in out
    assert jobs_of(old).count() == 1

    assert [ran.outcome for ran in run_jobs()] == ["succeeded"]
    old.refresh_from_db()
    assert (old.processing_status, old.page_count) == ("processed", 3)
    event = processed_events(old).get()
    assert (event.unit, event.quantity, event.organization_id) == ("page", 3, org.pk)
    recent.refresh_from_db()
    assert recent.processing_status == "pending"

    out, _ = run()  # processed: nothing left to defer, nothing is billed twice
    assert "0 pending document(s)" in out
    assert "0 deferred" in out
    assert processed_events().count() == 1


def test_older_than_minutes_zero_includes_recent_uploads(org, owner):
    recent = pending_document(org, owner, minutes_ago=0)
    out, _ = run("--older-than-minutes", "0")
    assert "1 deferred" in out
    run_jobs()
    recent.refresh_from_db()
    assert recent.processing_status == "processed"


def test_a_document_whose_job_is_still_waiting_is_left_to_it(org, owner):
    document = services.document_create(
        organization=org,
        acting_user=owner,
        case=CaseFactory(organization=org),
        file=SimpleUploadedFile("notes.txt", b"text\n", "text/plain"),
        request_id=None,
    )
    job = jobs_of(document).get()
    out, _ = run("--older-than-minutes", "0")
    assert f"{document.pk} (acme-law" in out and f"already has job {job.pk} (waiting)" in out
    assert jobs_of(document).count() == 1


def test_dry_run_lists_and_changes_nothing(org, owner):
    document = pending_document(org, owner)
    out, _ = run("--dry-run")
    assert f"{document.pk} (acme-law, 'notes.txt'" in out and "would defer processing" in out
    assert "Dry run: nothing was deferred." in out
    assert not jobs_of(document).exists()
    document.refresh_from_db()
    assert document.processing_status == "pending"


def test_organization_limits_to_one_organization(org, owner, outsider_org, outsider):
    ours = pending_document(org, owner)
    theirs = pending_document(outsider_org, outsider)
    out, _ = run("--organization", "other-firm")
    assert "1 pending document(s) of other-firm" in out
    assert str(theirs.pk) in out and str(ours.pk) not in out
    assert jobs_of(theirs).get().args["organization_id"] == str(outsider_org.pk)
    assert not jobs_of(ours).exists()
    run_jobs()
    theirs.refresh_from_db()
    ours.refresh_from_db()
    assert (theirs.processing_status, ours.processing_status) == ("processed", "pending")
    assert processed_events(theirs).get().organization_id == outsider_org.pk
    with pytest.raises(CommandError, match="No organization with slug 'nobody'"):
        run("--organization", "nobody")


def test_limit_takes_the_oldest_first(org, owner):
    newer = pending_document(org, owner, minutes_ago=20)
    older = pending_document(org, owner, minutes_ago=30)
    out, _ = run("--limit", "1")
    assert str(older.pk) in out and str(newer.pk) not in out
    run_jobs()
    assert list(processed_events().values_list("resource_id", flat=True)) == [older.pk]


def test_unprocessable_document_is_failed_by_its_job(org, owner):
    document = pending_document(org, owner, text="")
    out, _ = run()
    assert "1 deferred" in out
    assert [ran.result for ran in run_jobs()] == ["failed"]
    document.refresh_from_db()
    assert (document.processing_status, document.processing_failure_reason) == (
        "failed",
        "empty file",
    )
    assert not processed_events().exists()


def test_database_error_exits_1_and_the_document_stays_pending_for_the_next_run(
    org, owner, monkeypatch
):
    document = pending_document(org, owner)

    def refused(**kwargs):
        raise OperationalError("canceling statement due to statement timeout")

    monkeypatch.setattr(process_documents, "defer_processing", refused)
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 document\\(s\\) could not be deferred"):
        call_command("process_documents", stdout=out, stderr=err)
    assert f"{document.pk} (acme-law" in err.getvalue()
    assert "database error: OperationalError: canceling statement" in err.getvalue()
    assert "0 deferred, 0 already queued, 1 database errors." in out.getvalue()
    assert not jobs_of(document).exists()

    monkeypatch.undo()  # the database is back: the next run defers it, the job bills it once
    out, _ = run()
    assert "1 deferred" in out
    run_jobs()
    assert processed_events(document).get().quantity == 3
