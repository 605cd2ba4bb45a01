"""``manage.py process_documents``: the retry path for documents left pending."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import BillingEvent
from cases import services
from cases.models import Document
from cases.tests.factories import CaseFactory
from cases.tests.test_document_billing import fail_doc_processed_billing

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def pending_document(organization, user, *, minutes_ago=11, text="one\fpage two\fthree"):
    """A document as an upload leaves it before its processing ran (the on_commit
    callback never runs in this test's transaction), uploaded ``minutes_ago``."""
    document = services.document_create(
        organization=organization,
        acting_user=user,
        case=CaseFactory(organization=organization),
        file=SimpleUploadedFile("notes.txt", text.encode(), "text/plain"),
        request_id=None,  # outside a request: no idempotency key
    )
    uploaded_at = timezone.now() - timedelta(minutes=minutes_ago)
    Document.objects.filter(pk=document.pk).update(uploaded_at=uploaded_at)
    return document


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("process_documents", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def processed_events(document=None):
    events = BillingEvent.objects.filter(event_name="doc.processed")
    return events.filter(resource_id=document.pk) if document else events


def test_processes_an_old_pending_document_once(org, owner):
    old = pending_document(org, owner)
    recent = pending_document(org, owner, minutes_ago=0)  # its own on_commit may still run
    out, err = run()
    assert "1 pending document(s)" in out
    assert f"[1/1] {old.pk} (acme-law, 'notes.txt'" in out
    assert "processed, 3 page(s) billed" in out
    assert "Done in" in out and "1 processed, 0 failed, 0 skipped, 0 database errors." in out
    assert err == ""
    old.refresh_from_db()
    assert (old.processing_status, old.page_count) == ("processed", 3)
    event = processed_events(old).get()
    assert (event.unit, event.quantity, event.organization_id) == ("page", 3, org.pk)
    recent.refresh_from_db()
    assert recent.processing_status == "pending"

    out, _ = run()  # a second run finds nothing: nothing is billed twice
    assert "0 pending document(s)" in out
    assert "0 processed" in out
    assert processed_events().count() == 1


def test_older_than_minutes_zero_includes_recent_uploads(org, owner):
    recent = pending_document(org, owner, minutes_ago=0)
    out, _ = run("--older-than-minutes", "0")
    assert "1 processed" in out
    recent.refresh_from_db()
    assert recent.processing_status == "processed"


def test_dry_run_lists_and_changes_nothing(org, owner):
    document = pending_document(org, owner)
    out, _ = run("--dry-run")
    assert f"{document.pk} (acme-law, 'notes.txt'" in out and "would process" in out
    assert "Dry run: nothing was processed or billed." in out
    document.refresh_from_db()
    assert document.processing_status == "pending"
    assert not processed_events().exists()


def test_organization_limits_to_one_organization(org, owner, outsider_org, outsider):
    ours = pending_document(org, owner)
    theirs = pending_document(outsider_org, outsider)
    out, _ = run("--organization", "other-firm")
    assert "1 pending document(s) of other-firm" in out
    assert str(theirs.pk) in out and str(ours.pk) not in out
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
    assert list(processed_events().values_list("resource_id", flat=True)) == [older.pk]


def test_unprocessable_document_is_failed_not_a_command_error(org, owner):
    document = pending_document(org, owner, text="")
    out, _ = run()
    assert "failed: empty file" in out and "1 failed" in out
    document.refresh_from_db()
    assert document.processing_status == "failed"
    assert not processed_events().exists()


def test_database_error_exits_1_and_the_document_stays_pending_for_the_next_run(
    org, owner, monkeypatch
):
    document = pending_document(org, owner)
    fail_doc_processed_billing(monkeypatch)
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 document\\(s\\) hit a database error"):
        call_command("process_documents", stdout=out, stderr=err)
    assert f"{document.pk} (acme-law" in err.getvalue()
    assert "database error, still pending: OperationalError: canceling statement" in (
        err.getvalue()
    )
    assert "0 processed, 0 failed, 0 skipped, 1 database errors." in out.getvalue()
    document.refresh_from_db()
    assert (document.processing_status, document.processed_at) == ("pending", None)
    assert not processed_events().exists()

    monkeypatch.undo()  # the database is back: the next run bills it, once
    out, _ = run()
    assert "1 processed" in out
    assert processed_events(document).get().quantity == 3
