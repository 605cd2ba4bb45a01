import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pypdf import PdfWriter

from billing.models import BillingEvent
from cases import services
from cases.models import Document
from cases.processing import TEXT_LINES_PER_PAGE, count_text_pages
from cases.tests.factories import CaseFactory

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


def test_retried_upload_is_billed_once(api, org, django_capture_on_commit_callbacks):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):
            upload(api, case, "a.txt", b"line\n", "text/plain", HTTP_X_REQUEST_ID="up-1")
    assert BillingEvent.objects.filter(event_name="doc.upload").count() == 1
    assert BillingEvent.objects.filter(event_name="api.request").count() == 1


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


def test_processing_twice_bills_once(org, owner, django_capture_on_commit_callbacks):
    case = CaseFactory(organization=org)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        document = services.document_create(
            organization=org,
            acting_user=owner,
            case=case,
            file=SimpleUploadedFile("b.pdf", pdf_bytes(2), "application/pdf"),
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
