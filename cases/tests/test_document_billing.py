import io
import logging
import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from pypdf import PdfWriter

from billing.models import BillingEvent
from cases import processing, services
from cases.models import Document
from cases.processing import TEXT_LINES_PER_PAGE, count_text_pages
from cases.tests.factories import CaseFactory
from core.testing import race_second_behind_first
from tenancy.context import cross_tenant, tenant_context
from tenancy.tests.factories import OrganizationFactory, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def pdf_bytes(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def upload(api, case, name, content, content_type, **headers):
    return api.post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": SimpleUploadedFile(name, content, content_type)},
        format="multipart",
        **headers,
    )


def test_pdf_upload_records_upload_then_processed_pages(
    api, org, owner, django_capture_on_commit_callbacks
):
    case = CaseFactory(organization=org)
    content = pdf_bytes(3)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = upload(api, case, "brief.pdf", content, "application/pdf")
    assert response.status_code == 201, response.content
    assert len(callbacks) == 1
    document = Document.objects.get()
    assert document.processing_status == "processed"
    assert document.page_count == 3
    assert document.processed_at is not None

    upload_event = BillingEvent.objects.get(event_name="doc.upload")
    assert upload_event.organization_id == org.pk
    assert upload_event.user_id == owner.pk
    assert upload_event.resource_id == document.pk
    assert upload_event.request_id == response["X-Request-ID"]
    assert (upload_event.unit, upload_event.quantity) == ("document", 1)
    assert upload_event.dimensions == {
        "content_type": "application/pdf",
        "size_bytes": len(content),
        "filename": "brief.pdf",
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
            raise Boom
    assert Document.objects.count() == 0
    assert BillingEvent.objects.count() == 0


def stored_files(root) -> list:
    return [path for path in Path(root).rglob("*") if path.is_file()]


def test_retried_upload_is_one_document_billed_once(
    api, org, settings, django_capture_on_commit_callbacks
):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        responses = [
            upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_X_REQUEST_ID="up-1")
            for _ in range(2)
        ]
    # the retry is answered like the first upload: 201 with the same document
    assert [r.status_code for r in responses] == [201, 201], responses[1].content
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert Document.objects.count() == 1
    assert len(stored_files(settings.MEDIA_ROOT)) == 1
    assert len(callbacks) == 1  # processing scheduled once, by the first upload
    document = Document.objects.get()
    assert document.processing_status == "processed"
    upload_event = BillingEvent.objects.get(event_name="doc.upload")
    assert upload_event.resource_id == document.pk
    processed = BillingEvent.objects.get(event_name="doc.processed")
    assert processed.resource_id == document.pk
    assert BillingEvent.objects.filter(event_name="api.request").count() == 1


def test_reused_request_id_for_another_upload_is_409(api, org):
    case, other_case = CaseFactory(organization=org), CaseFactory(organization=org)
    first = upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_X_REQUEST_ID="up-2")
    assert first.status_code == 201
    for target, name, content in ((other_case, "a.txt", b"line\n"), (case, "b.txt", b"x\n")):
        response = upload(api, target, name, content, "text/plain", HTTP_X_REQUEST_ID="up-2")
        assert response.status_code == 409, response.content
        assert response.json()["code"] == "request_id_conflict"
    assert list(Document.objects.values_list("pk", flat=True)) == [uuid.UUID(first.json()["id"])]
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def test_retry_after_the_document_was_deleted_is_409_not_a_new_document(api, org):
    case = CaseFactory(organization=org)
    first = upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_X_REQUEST_ID="up-3")
    assert api.delete(f"/api/v1/documents/{first.json()['id']}/").status_code == 204
    retry = upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_X_REQUEST_ID="up-3")
    assert retry.status_code == 409
    assert "no longer exists" in retry.json()["detail"]
    assert Document.objects.count() == 0
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_create_one_document(settings):
    """Two uploads with the same request id in two transactions at once: the second's
    INSERT of the doc.upload event waits on the unique index until the first commits
    (asserted: ``pg_blocking_pids`` of its backend is the first's), then inserts
    nothing, and the second returns the first's document without storing a file."""
    with cross_tenant(reason="test set-up"):
        org = OrganizationFactory()
        user = member_of(org)
        case = CaseFactory(organization=org)

    def upload_once():
        with tenant_context(org):
            return services.document_create(
                organization=org,
                acting_user=user,
                case=case,
                file=SimpleUploadedFile("race.txt", b"line\n", "text/plain"),
                request_id="race-1",
            ).pk

    results = race_second_behind_first(upload_once, upload_once, what="the second upload")
    assert not isinstance(results["first"], Exception), results["first"]
    assert results["second"] == results["first"]
    with cross_tenant(reason="test assertions"):
        assert list(Document.objects.values_list("pk", flat=True)) == [results["first"]]
        assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
        assert BillingEvent.objects.filter(event_name="doc.processed").count() == 1
    assert len(stored_files(settings.MEDIA_ROOT)) == 1


def test_text_pages(api, org, django_capture_on_commit_callbacks):
    case = CaseFactory(organization=org)
    text = "\n".join(f"line {i}" for i in range(TEXT_LINES_PER_PAGE * 2 + 1)) + "\fsecond"
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, case, "notes.txt", text.encode(), "text/plain")
    assert Document.objects.get().page_count == 4
    assert BillingEvent.objects.get(event_name="doc.processed").quantity == 4


@pytest.mark.parametrize(
    ("name", "content", "content_type", "reason"),
    [
        ("fake.pdf", b"%PDF-1.7 this is not really a pdf", "application/pdf", "unreadable PDF"),
        ("photo.png", b"\x89PNG\r\n\x1a\n....", "image/png", "unsupported document type"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "text/plain", "not valid UTF-8"),
    ],
)
def test_unprocessable_document_is_failed_and_not_billed_for_processing(
    api, org, django_capture_on_commit_callbacks, name, content, content_type, reason
):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api, case, name, content, content_type)
    assert response.status_code == 201
    document = Document.objects.get()
    assert document.processing_status == "failed"
    assert reason in document.processing_failure_reason
    assert document.page_count is None
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1


def test_unexpected_processing_error_marks_failed_logs_and_does_not_bill(
    api, org, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    """A bug in the page counter (any exception, not DocumentProcessingError) must not
    leave the document pending forever: failed, a reason, ERROR with the document id."""

    def broken_counter(text):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(processing, "count_text_pages", broken_counter)
    case = CaseFactory(organization=org)
    with (
        caplog.at_level(logging.ERROR, logger="cases.documents"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = upload(api, case, "notes.txt", b"some text\n", "text/plain")
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
        request_id=None,  # outside a request: no idempotency key
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
    real = services.record_event

    def record_event(**kwargs):
        if kwargs.get("event_name") == "doc.processed":
            raise OperationalError(message)
        return real(**kwargs)

    monkeypatch.setattr(services, "record_event", record_event)


def test_database_error_after_upload_leaves_the_document_pending_and_logs_it(
    api, org, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    """The upload's after-commit processing hits a database error in ``_count_and_bill``:
    the upload is still a 201, the document stays pending with NO doc.processed event
    (not failed: its pages are billed when ``process_documents`` retries), and one ERROR
    names the document."""
    fail_doc_processed_billing(monkeypatch)
    case = CaseFactory(organization=org)
    with (
        caplog.at_level(logging.ERROR, logger="cases.documents"),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        response = upload(api, case, "notes.txt", b"some text\n", "text/plain")
    assert response.status_code == 201, response.content
    assert len(callbacks) == 1
    document = Document.objects.get()
    assert document.processing_status == "pending"
    assert (document.page_count, document.processed_at) == (None, None)
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
    errors = [r for r in caplog.records if r.name == "cases.documents"]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert str(document.pk) in errors[0].getMessage()
    assert "process_documents" in errors[0].getMessage()
    assert errors[0].exc_info[0] is OperationalError


def test_processing_twice_bills_once(org, owner, django_capture_on_commit_callbacks):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        document = services.document_create(
            organization=org,
            acting_user=owner,
            case=case,
            file=SimpleUploadedFile("b.pdf", pdf_bytes(2), "application/pdf"),
            request_id=None,  # outside a request: no idempotency key
        )
    assert len(callbacks) == 1
    services.document_process(organization=org, document_id=document.pk)
    services.document_process(organization=org, document_id=document.pk)
    assert BillingEvent.objects.filter(event_name="doc.processed").count() == 1
    # outside a request there is no request id: the upload event has none
    assert BillingEvent.objects.get(event_name="doc.upload").request_id is None


def test_processing_runs_only_after_commit(api, org, django_capture_on_commit_callbacks):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        upload(api, case, "c.pdf", pdf_bytes(1), "application/pdf")
    assert len(callbacks) == 1
    assert Document.objects.get().processing_status == "pending"
    assert not BillingEvent.objects.filter(event_name="doc.processed").exists()


def test_other_organization_cannot_see_document(outsider_api, api, org):
    case = CaseFactory(organization=org)
    response = upload(api, case, "d.txt", b"x\n", "text/plain")
    assert outsider_api.get(f"/api/v1/documents/{response.json()['id']}/").status_code == 404


def test_count_text_pages():
    assert count_text_pages("one line") == 1
    assert count_text_pages("\n" * TEXT_LINES_PER_PAGE) == 1
    assert count_text_pages("a\fb\fc") == 3
