import errno
import logging
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from billing.models import BillingEvent
from cases import processing, services
from cases.models import Document
from cases.processing import TEXT_LINES_PER_PAGE, count_text_pages
from cases.testing import pdf_bytes
from cases.tests.factories import CaseFactory
from tenancy.context import cross_tenant, tenant_context
from tenancy.tests.factories import OrganizationFactory, member_of
from tenancy.tests.jobs import make_jobs_due, run_jobs

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def upload(api, case, name, content, content_type, **headers):
    return api.post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": SimpleUploadedFile(name, content, content_type)},
        format="multipart",
        **headers,
    )


def jobs_of(document):
    return ProcrastinateJob.objects.filter(args__document_id=str(document.pk))


def test_pdf_upload_records_upload_then_processed_pages(api, org, owner):
    case = CaseFactory(organization=org)
    content = pdf_bytes(3)
    response = upload(api, case, "brief.pdf", content, "application/pdf")
    assert response.status_code == 201, response.content
    assert response.json()["processing_status"] == "pending"  # answered before processing
    ran = run_jobs()
    assert [r.job.task_name for r in ran] == ["cases.process_document"]
    assert ran[0].job.task_kwargs["organization_id"] == str(org.pk)
    document = Document.objects.get()
    assert ran[0].job.task_kwargs["document_id"] == str(document.pk)
    assert document.processing_status == "processed"
    assert document.page_count == 3
    assert document.processed_at is not None

    upload_event = BillingEvent.objects.get(event_name="doc.upload")
    assert upload_event.organization_id == org.pk
    assert upload_event.user_id == owner.pk
    assert upload_event.resource_id == document.pk
    assert upload_event.request_id == f"doc.upload:{document.pk}"  # keyed on the document
    assert (upload_event.unit, upload_event.quantity) == ("document", 1)
    assert upload_event.dimensions == {
        "content_type": "application/pdf",
        "size_bytes": len(content),
        "filename": "brief.pdf",
        "request_id": response["X-Server-Request-ID"],
    }
    processed = BillingEvent.objects.get(event_name="doc.processed")
    assert (processed.unit, processed.quantity) == ("page", 3)
    assert processed.resource_id == document.pk
    assert processed.organization_id == org.pk
    assert processed.dimensions["pages"] == 3
    # and the request itself
    assert BillingEvent.objects.filter(event_name="api.request").count() == 1


def test_upload_event_is_in_the_documents_transaction(org, owner):
    """If the upload transaction rolls back, neither the document nor its event remain."""
    case = CaseFactory(organization=org)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        from django.db import transaction

        with transaction.atomic():
            services.document_create(
                organization=org,
                acting_user=owner,
                case=case,
                file=SimpleUploadedFile("a.txt", b"hello", "text/plain"),
                request_id="rollback-1",
            )
            assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
            assert ProcrastinateJob.objects.filter(task_name="cases.process_document").exists()
            raise Boom
    assert Document.objects.count() == 0
    assert BillingEvent.objects.count() == 0
    assert not ProcrastinateJob.objects.exists()  # the job was deferred in that transaction


def stored_files(root) -> list:
    return [path for path in Path(root).rglob("*") if path.is_file()]


def test_retried_upload_is_one_document_billed_once(api, org, settings):
    """The same Idempotency-Key and the same bytes: the first answer replayed (201, the
    same document), no second file, row, processing or charge."""
    case = CaseFactory(organization=org)
    responses = [
        upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_IDEMPOTENCY_KEY="up-1")
        for _ in range(2)
    ]
    ran = run_jobs()
    assert [r.status_code for r in responses] == [201, 201], responses[1].content
    assert responses[1]["Idempotent-Replayed"] == "true"
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert Document.objects.count() == 1
    assert len(stored_files(settings.MEDIA_ROOT)) == 1
    assert len(ran) == 1  # processing deferred once, by the first upload
    document = Document.objects.get()
    assert document.processing_status == "processed"
    upload_event = BillingEvent.objects.get(event_name="doc.upload")
    assert upload_event.resource_id == document.pk
    processed = BillingEvent.objects.get(event_name="doc.processed")
    assert processed.resource_id == document.pk
    assert BillingEvent.objects.filter(event_name="api.request").count() == 1


def test_the_same_key_with_other_bytes_is_422_and_nothing_is_stored(api, org, settings):
    """Same key, same file name and size, other bytes: not the same upload (the SHA-256 of
    each file is in the fingerprint), so 422, not the first document."""
    case = CaseFactory(organization=org)
    first = upload(api, case, "a.txt", b"line-1\n", "text/plain", HTTP_IDEMPOTENCY_KEY="up-2")
    assert first.status_code == 201
    for target, name, content in (
        (case, "a.txt", b"line-2\n"),  # same name and size, other bytes
        (CaseFactory(organization=org), "a.txt", b"line-1\n"),  # another case
        (case, "b.txt", b"line-1\n"),  # another name
    ):
        response = upload(api, target, name, content, "text/plain", HTTP_IDEMPOTENCY_KEY="up-2")
        assert response.status_code == 422, response.content
        assert response.json()["code"] == "idempotency_key_reused"
    assert list(Document.objects.values_list("pk", flat=True)) == [uuid.UUID(first.json()["id"])]
    assert len(stored_files(settings.MEDIA_ROOT)) == 1
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def test_a_retry_after_the_document_was_deleted_replays_the_first_answer(api, org):
    """A replay returns the stored answer as it was (Stripe's rule), even though the
    document was deleted since; nothing is created or billed again."""
    case = CaseFactory(organization=org)
    first = upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_IDEMPOTENCY_KEY="up-3")
    assert api.delete(f"/api/v1/documents/{first.json()['id']}/").status_code == 204
    retry = upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_IDEMPOTENCY_KEY="up-3")
    assert (retry.status_code, retry["Idempotent-Replayed"]) == (201, "true")
    assert retry.json() == first.json()
    assert Document.objects.count() == 0
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def test_x_request_id_does_not_deduplicate_uploads(api, org, settings):
    """Two uploads with one X-Request-ID (and the same name and size) are two documents,
    each billed once: the client's correlation id is never a billing key."""
    case = CaseFactory(organization=org)
    responses = [
        upload(api, case, "a.txt", content, "text/plain", HTTP_X_REQUEST_ID="up-4")
        for content in (b"line-1\n", b"line-2\n")
    ]
    assert [r.status_code for r in responses] == [201, 201]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 2
    assert len(stored_files(settings.MEDIA_ROOT)) == 2
    events = BillingEvent.objects.filter(event_name="doc.upload")
    assert {str(e.resource_id) for e in events} == ids
    assert {e.request_id for e in events} == {f"doc.upload:{i}" for i in ids}


@pytest.mark.django_db(transaction=True)
def test_each_document_is_billed_once_for_its_upload(settings):
    """``doc.upload`` is keyed on the document: recording it again for the same document
    (whatever the request ids) creates nothing."""
    from billing.services import event_record

    with cross_tenant(reason="test set-up"):
        org = OrganizationFactory()
        user = member_of(org)
        case = CaseFactory(organization=org)
    with tenant_context(org):
        document = services.document_create(
            organization=org,
            acting_user=user,
            case=case,
            file=SimpleUploadedFile("once.txt", b"line\n", "text/plain"),
            request_id="req-a",
        )
        again = event_record(
            organization=org,
            event_name="doc.upload",
            resource_id=document.pk,
            request_id=f"doc.upload:{document.pk}",
        )
        assert again is None
    assert [r.outcome for r in run_jobs()] == ["succeeded"]  # the document's one job
    with cross_tenant(reason="test assertions"):
        assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
        assert BillingEvent.objects.filter(event_name="doc.processed").count() == 1


def test_text_pages(api, org):
    case = CaseFactory(organization=org)
    text = "\n".join(f"line {i}" for i in range(TEXT_LINES_PER_PAGE * 2 + 1)) + "\fsecond"
    upload(api, case, "notes.txt", text.encode(), "text/plain")
    run_jobs()
    assert Document.objects.get().page_count == 4
    assert BillingEvent.objects.get(event_name="doc.processed").quantity == 4


@pytest.mark.parametrize(
    ("name", "content", "content_type", "reason"),
    [
        ("fake.pdf", b"%PDF-1.7 this is not really a pdf", "application/pdf", "unreadable PDF"),
        ("photo.png", b"\x89PNG\r\n\x1a\n....", "image/png", "unsupported document type"),
    ],
)
def test_unprocessable_document_is_failed_and_not_billed_for_processing(
    api, org, name, content, content_type, reason
):
    case = CaseFactory(organization=org)
    response = upload(api, case, name, content, content_type)
    assert response.status_code == 201
    # a permanent failure is the document's, not the job's: the job succeeds, no retry
    assert [(r.outcome, r.result) for r in run_jobs()] == [("succeeded", "failed")]
    document = Document.objects.get()
    assert document.processing_status == "failed"
    assert reason in document.processing_failure_reason
    assert document.page_count is None
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def test_a_stored_text_that_is_not_utf8_fails_processing(org, owner):
    """The upload refuses such bytes (415, ``cases.uploads``); a document stored by other
    code, or before that check, still fails processing cleanly."""
    case = CaseFactory(organization=org)
    latin = SimpleUploadedFile("latin.txt", "caf\xe9".encode("latin-1"), "text/plain")
    with tenant_context(org):
        services.document_create(
            organization=org, acting_user=owner, case=case, file=latin, request_id=None
        )
    assert [(r.outcome, r.result) for r in run_jobs()] == [("succeeded", "failed")]
    document = Document.objects.get()
    assert "not valid UTF-8" in document.processing_failure_reason
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()


def test_unexpected_processing_error_marks_failed_logs_and_does_not_bill(
    api, org, monkeypatch, caplog
):
    """A bug in the page counter (any exception, not DocumentProcessingError) must not
    leave the document pending forever: failed, a reason, ERROR with the document id."""

    def broken_counter(text):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(processing, "count_text_pages", broken_counter)
    case = CaseFactory(organization=org)
    with caplog.at_level(logging.ERROR, logger="cases.documents"):
        response = upload(api, case, "notes.txt", b"some text\n", "text/plain")
        assert [r.outcome for r in run_jobs()] == ["succeeded"]
    assert response.status_code == 201
    document = Document.objects.get()
    assert document.processing_status == "failed"
    assert document.processing_failure_reason == "unexpected processing error (RuntimeError)"
    assert document.processed_at is not None
    assert document.page_count is None
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
    errors = [r for r in caplog.records if r.name == "cases.documents"]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert str(document.pk) in errors[0].getMessage()
    assert errors[0].exc_info[0] is RuntimeError


def test_permanent_database_error_while_billing_marks_the_document_failed(org, owner, settings):
    """A real database error that would recur on every retry (a page price overflowing
    the integer column: DataError on the doc.processed INSERT): the savepoint is rolled
    back (no half 'processed' document, nothing billed) and the document is failed with
    a reason, not left pending for process_documents to retry forever."""
    settings.BILLING_PRICE_BOOK = {"doc.processed": 3_000_000_000}
    case = CaseFactory(organization=org)
    document = services.document_create(
        organization=org,
        acting_user=owner,
        case=case,
        file=SimpleUploadedFile("c.pdf", pdf_bytes(2), "application/pdf"),
        request_id=None,  # outside a request: no request id
    )
    services.document_process(organization=org, document_id=document.pk)
    document.refresh_from_db()
    assert (document.processing_status, document.page_count) == ("failed", None)
    assert document.processing_failure_reason == "unexpected processing error (DataError)"
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    # the transaction is still usable after the error
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def fail_doc_processed_billing(monkeypatch, message="canceling statement due to statement timeout"):
    """Make the doc.processed billing call raise ``OperationalError`` (an injected
    database failure, e.g. a statement timeout); other billing calls are untouched."""
    real = services.event_record

    def event_record(**kwargs):
        if kwargs.get("event_name") == "doc.processed":
            raise OperationalError(message)
        return real(**kwargs)

    monkeypatch.setattr(services, "event_record", event_record)


def test_transient_database_error_leaves_the_document_pending_and_the_job_retried(
    api, org, monkeypatch
):
    """The job hits a database error in ``_count_and_bill``: the upload is still a 201,
    the document stays pending with NO doc.processed event (not failed: the failure is
    not the document's), and the job goes back to the queue, scheduled after a backoff;
    its next attempt, with the database back, bills the pages once."""
    fail_doc_processed_billing(monkeypatch)
    case = CaseFactory(organization=org)
    response = upload(api, case, "notes.txt", b"some text\n", "text/plain")
    assert response.status_code == 201, response.content
    ran = run_jobs()
    assert [r.outcome for r in ran] == ["retry"]
    assert isinstance(ran[0].error, OperationalError)
    document = Document.objects.get()
    assert document.processing_status == "pending"
    assert (document.page_count, document.processed_at) == (None, None)
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
    job = jobs_of(document).get()
    assert (job.status, job.attempts) == ("todo", 1)
    # exponential backoff: the first retry waits 2 ** 1 s
    assert timezone.now() < job.scheduled_at <= timezone.now() + timedelta(seconds=2)
    assert run_jobs() == []  # not due yet

    monkeypatch.undo()  # the database is back
    make_jobs_due()
    assert [(r.outcome, r.result) for r in run_jobs()] == [("succeeded", "processed")]
    document.refresh_from_db()
    assert document.processing_status == "processed"
    assert BillingEvent.objects.filter(event_name="doc.processed").count() == 1


def test_transient_storage_error_is_retried_a_missing_file_is_failed(api, org, monkeypatch):
    """Storage errors: an ``OSError`` (an I/O error, a network file system or bucket that
    did not answer) is transient and retried like a database error; a missing stored
    file (``FileNotFoundError``) is permanent: the document is failed with the reason."""
    real_count_pages = services.count_pages

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(services, "count_pages", io_error)
    case = CaseFactory(organization=org)
    upload(api, case, "notes.txt", b"some text\n", "text/plain")
    ran = run_jobs()
    assert [r.outcome for r in ran] == ["retry"] and isinstance(ran[0].error, OSError)
    document = Document.objects.get()
    assert document.processing_status == "pending"

    monkeypatch.setattr(services, "count_pages", real_count_pages)
    document.file.storage.delete(document.file.name)
    make_jobs_due()
    assert [(r.outcome, r.result) for r in run_jobs()] == [("succeeded", "failed")]
    document.refresh_from_db()
    assert (document.processing_status, document.processing_failure_reason) == (
        "failed",
        "the stored file is missing",
    )
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()


def test_processing_twice_bills_once(org, owner):
    case = CaseFactory(organization=org)
    document = services.document_create(
        organization=org,
        acting_user=owner,
        case=case,
        file=SimpleUploadedFile("b.pdf", pdf_bytes(2), "application/pdf"),
        request_id=None,  # outside a request: no request id
    )
    assert jobs_of(document).count() == 1
    services.document_process(organization=org, document_id=document.pk)
    services.document_process(organization=org, document_id=document.pk)
    assert BillingEvent.objects.filter(event_name="doc.processed").count() == 1
    # outside a request there is no request id: the event is keyed on the document alone
    upload_event = BillingEvent.objects.get(event_name="doc.upload")
    assert upload_event.request_id == f"doc.upload:{document.pk}"
    assert upload_event.dimensions["request_id"] is None


def test_processing_is_a_job_not_part_of_the_upload(api, org):
    case = CaseFactory(organization=org)
    upload(api, case, "c.pdf", pdf_bytes(1), "application/pdf")
    document = Document.objects.get()
    job = jobs_of(document).get()
    assert (job.status, job.queue_name, job.queueing_lock) == (
        "todo",
        "documents",
        f"document:{document.pk}",
    )
    assert document.processing_status == "pending"
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()


def test_other_organization_cannot_see_document(outsider_api, api, org):
    case = CaseFactory(organization=org)
    response = upload(api, case, "d.txt", b"x\n", "text/plain")
    assert outsider_api.get(f"/api/v1/documents/{response.json()['id']}/").status_code == 404


def test_count_text_pages():
    assert count_text_pages("one line") == 1
    assert count_text_pages("\n" * TEXT_LINES_PER_PAGE) == 1
    assert count_text_pages("a\fb\fc") == 3
