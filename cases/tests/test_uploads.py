"""Document uploads (``cases.uploads``): the size limit while streaming (413), the type
from the bytes (415), and for every refusal: a JSON error with a stable code, no document,
no stored file, no ``doc.upload`` charge, and the request billed once as what it was."""

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import StopUpload

from billing.models import BillingEvent
from cases.models import Document
from cases.testing import pdf_bytes
from cases.tests.factories import CaseFactory
from core.parsers import MaxSizeUploadHandler

pytestmark = pytest.mark.django_db

MZ = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


def _upload(api, case, name, content, content_type):
    return api.post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": SimpleUploadedFile(name, content, content_type)},
        format="multipart",
    )


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _assert_refused(response, status, code, org, media):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == code, response.json()
    assert not Document.objects.filter(organization=org).exists()
    assert not _stored_files(media)
    events = BillingEvent.objects.filter(organization=org)
    assert not events.filter(event_name="doc.upload").exists()
    request_event = events.get(event_name="api.request")
    assert request_event.dimensions["status_code"] == status


def test_an_upload_over_the_limit_is_stopped_while_streaming(
    api, org, settings, _media, monkeypatch
):
    settings.DOCUMENT_MAX_BYTES = 1000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # spool to disk: a partial file would remain
    stopped = []
    receive = MaxSizeUploadHandler.receive_data_chunk

    def spy(self, raw_data, start):
        try:
            return receive(self, raw_data, start)
        except StopUpload:
            stopped.append(self.received)
            raise

    monkeypatch.setattr(MaxSizeUploadHandler, "receive_data_chunk", spy)
    case = CaseFactory(organization=org)
    # under limit + multipart overhead: Content-Length lets it through, the handler stops it
    response = _upload(api, case, "big.txt", b"a" * 5000, "text/plain")
    _assert_refused(response, 413, "file_too_large", org, _media)
    assert stopped and stopped[0] > 1000


def test_a_content_length_far_over_the_limit_is_refused_before_reading(api, org, settings, _media):
    settings.DOCUMENT_MAX_BYTES = 1000
    case = CaseFactory(organization=org)
    response = _upload(api, case, "big.txt", b"a" * 100_000, "text/plain")
    _assert_refused(response, 413, "file_too_large", org, _media)


def test_the_handler_passes_nothing_past_the_limit():
    handler = MaxSizeUploadHandler(limit=10)
    assert handler.receive_data_chunk(b"x" * 6, 0) == b"x" * 6
    with pytest.raises(StopUpload) as info:
        handler.receive_data_chunk(b"x" * 6, 6)
    assert info.value.connection_reset is True  # the rest of the body is not read
    assert handler.exceeded


def test_an_upload_at_the_limit_is_accepted(api, org, settings):
    settings.DOCUMENT_MAX_BYTES = 1000
    case = CaseFactory(organization=org)
    response = _upload(api, case, "ok.txt", b"a" * 1000, "text/plain")
    assert response.status_code == 201, response.content
    assert response.json()["size_bytes"] == 1000


def test_an_executable_declared_as_pdf_is_a_415(api, org, _media):
    case = CaseFactory(organization=org)
    response = _upload(api, case, "brief.pdf", MZ, "application/pdf")
    _assert_refused(response, 415, "unsupported_file_type", org, _media)


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("setup.exe", "text/plain"),
        ("run.sh", "text/plain"),
        # saved by a download (and by Windows) as run.sh, setup.bat, tool.ps1
        ("run.sh ", "text/plain"),
        ("setup.bat.", "text/plain"),
        ("tool.ps1 . ", "text/plain"),
        ("run.sh\t", "text/plain"),
        ("notes.txt", "application/x-msdownload"),
        ("notes.txt", "application/x-sh; charset=utf-8"),
    ],
)
def test_an_executable_name_or_declared_type_is_a_415_whatever_the_bytes(
    api, org, _media, name, content_type
):
    case = CaseFactory(organization=org)
    response = _upload(api, case, name, b"echo hello\n", content_type)
    _assert_refused(response, 415, "file_type_mismatch", org, _media)


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    return out.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"caf\xe9 au lait\n",  # Latin-1, not UTF-8
        b"text with a NUL\x00 inside",
        b"text with a bell \x07",
        _zip(),
    ],
)
def test_bytes_of_no_allowed_type_are_a_415(api, org, _media, content):
    case = CaseFactory(organization=org)
    response = _upload(api, case, "notes.txt", content, "text/plain")
    _assert_refused(response, 415, "unsupported_file_type", org, _media)


def test_a_type_outside_the_configured_list_is_a_415(api, org, settings, _media):
    settings.DOCUMENT_ALLOWED_TYPES = ["application/pdf"]
    case = CaseFactory(organization=org)
    response = _upload(api, case, "scan.png", PNG, "image/png")
    _assert_refused(response, 415, "unsupported_file_type", org, _media)


@pytest.mark.parametrize(
    "name, content, declared, detected",
    [
        ("brief.txt", pdf_bytes(1), "text/plain", "application/pdf"),
        ("scan.pdf", PNG, "application/pdf", "image/png"),
        ("notes", "Grüße, tab\tand\r\nnew lines\f".encode(), "", "text/plain"),
        ("bom.txt", b"\xef\xbb\xbfwith a BOM", "application/octet-stream", "text/plain"),
    ],
)
def test_the_stored_type_is_the_detected_one(api, org, name, content, declared, detected):
    case = CaseFactory(organization=org)
    response = _upload(api, case, name, content, declared)
    assert response.status_code == 201, response.content
    assert response.json()["content_type"] == detected
    document = Document.objects.get(organization=org)
    assert document.content_type == detected
    upload_event = BillingEvent.objects.get(organization=org, event_name="doc.upload")
    assert upload_event.dimensions["content_type"] == detected


def test_an_outsider_upload_to_our_case_is_refused_before_its_bytes_matter(
    outsider_api, org, outsider_org, _media
):
    case = CaseFactory(organization=org)
    response = _upload(outsider_api, case, "brief.pdf", MZ, "application/pdf")
    assert response.status_code in (400, 415)
    assert not Document.objects.exists()
    assert not _stored_files(_media)


def test_an_upload_with_an_idempotency_key_is_stopped_too(api, org, settings, _media):
    """With ``Idempotency-Key`` the body is parsed before the view (the fingerprint), by
    Django's handlers: ``MaxSizeUploadHandler`` is first among them."""
    settings.DOCUMENT_MAX_BYTES = 1000
    case = CaseFactory(organization=org)
    response = api.post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": SimpleUploadedFile("big.txt", b"a" * 5000, "text/plain")},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY="upload-1",
    )
    _assert_refused(response, 413, "file_too_large", org, _media)


def test_a_json_body_over_the_limit_with_an_idempotency_key_is_a_413(api, org, settings):
    settings.API_MAX_JSON_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post(
        "/api/v1/clients/", {"name": "x" * 5000}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert response.status_code == 413, response.content
    assert response.json()["code"] == "body_too_large"
    assert not Document.objects.exists()
    from cases.models import Client

    assert not Client.objects.filter(organization=org).exists()


def test_a_long_non_ascii_file_name_is_stored_shortened_and_kept_whole(api, org, _media):
    """200 "é" are 400 UTF-8 bytes, over a path component's 255 on the usual filesystems:
    the storage name keeps at most 120 bytes of it (and the extension); the document
    keeps the name as sent, and the download gives it back."""
    case = CaseFactory(organization=org)
    name = "é" * 200 + ".txt"
    response = _upload(api, case, name, b"a note\n", "text/plain")
    assert response.status_code == 201, response.content
    document = Document.objects.get()
    assert document.original_filename == name
    [stored] = _stored_files(_media)
    assert stored.read_bytes() == b"a note\n"
    assert stored.name.endswith(".txt") and len(stored.name.encode()) <= 120
    download = api.get(f"/api/v1/documents/{document.pk}/download/")
    assert download.status_code == 200
    assert "%C3%A9" * 200 + ".txt" in download["Content-Disposition"]
