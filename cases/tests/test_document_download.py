"""``GET /api/v1/documents/{id}/download/`` (``cases.downloads``): the owner, a member, an
outsider organization and no token; local files streamed, S3 redirected to a presigned URL
(signed locally by botocore: no network); media never served publicly."""

from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import Resolver404, resolve

from billing.models import BillingEvent
from cases.models import Document
from cases.tests.factories import CaseFactory
from tenancy.testing import bearer_client
from tenancy.tests.factories import member_of

pytestmark = pytest.mark.django_db

BYTES = b"%PDF-1.4\nnot really a pdf\n" * 500  # several FileResponse blocks


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def upload(api, case, name="Engagement letter.pdf", content_type="application/pdf", data=BYTES):
    file = SimpleUploadedFile(name, data, content_type=content_type)
    response = api.post(
        "/api/v1/documents/", {"case": str(case.pk), "file": file}, format="multipart"
    )
    assert response.status_code == 201, response.content
    return response.json()


def url(document_id) -> str:
    return f"/api/v1/documents/{document_id}/download/"


def test_download_url_points_at_the_endpoint_and_streams_the_file(api, org):
    created = upload(api, CaseFactory(organization=org))
    assert created["download_url"] == url(created["id"])
    response = api.get(created["download_url"])
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == BYTES
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'attachment; filename="Engagement letter.pdf"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Content-Length"] == str(len(BYTES))


def test_a_member_downloads_and_the_download_is_metered_once(api, org):
    created = upload(api, CaseFactory(organization=org))
    member = bearer_client(member_of(org, role="member"))
    before = BillingEvent.objects.filter(event_name="api.request").count()
    response = member.get(url(created["id"]))
    assert response.status_code == 200
    b"".join(response.streaming_content)
    events = BillingEvent.objects.filter(event_name="api.request").order_by("-created_at")
    assert events.count() == before + 1
    assert events.first().dimensions["route"].endswith("download/")


def test_a_non_ascii_name_is_encoded_per_rfc_5987(api, org):
    created = upload(api, CaseFactory(organization=org), name="Schriftsatz “Müller” №1.txt")
    response = api.get(url(created["id"]))
    assert response["Content-Disposition"] == (
        "attachment; filename*=utf-8''Schriftsatz%20%E2%80%9CM%C3%BCller%E2%80%9D%20%E2%84%961.txt"
    )


@pytest.mark.parametrize(
    "stored, served",
    [
        ("text/html", "text/html"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("", "application/octet-stream"),
        ("not a type", "application/octet-stream"),
    ],
)
def test_the_stored_content_type_is_served_only_when_well_formed(api, org, stored, served):
    # uploads store the type detected from the bytes; a row written otherwise (an older
    # upload, the admin) may hold anything
    created = upload(api, CaseFactory(organization=org), name="a.txt")
    Document.objects.filter(pk=created["id"]).update(content_type=stored)
    response = api.get(url(created["id"]))
    assert response["Content-Type"] == served
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"


def test_a_control_character_in_the_stored_name_never_breaks_the_header(api, org):
    created = upload(api, CaseFactory(organization=org), name="a.txt")
    Document.objects.filter(pk=created["id"]).update(original_filename="evil\r\nSet-Cookie: x.txt")
    response = api.get(url(created["id"]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="evilSet-Cookie: x.txt"'
    assert "Set-Cookie" not in response.headers


def test_an_outsider_gets_404_and_no_token_401(api, outsider_api, anon_api, org):
    created = upload(api, CaseFactory(organization=org))
    outsider = outsider_api.get(url(created["id"]))
    assert outsider.status_code == 404 and outsider.json()["code"] == "not_found"
    anonymous = anon_api.get(url(created["id"]))
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "not_authenticated"


def test_a_file_gone_from_storage_is_404_file_missing(api, org):
    created = upload(api, CaseFactory(organization=org))
    document = Document.objects.get(pk=created["id"])
    document.file.storage.delete(document.file.name)
    response = api.get(url(created["id"]))
    assert response.status_code == 404
    assert response.json()["code"] == "file_missing"


def test_media_is_never_served_publicly(api, org, client, settings):
    settings.DEBUG = True
    created = upload(api, CaseFactory(organization=org))
    stored = Document.objects.get(pk=created["id"]).file.name
    media_path = "/" + f"{settings.MEDIA_URL}{stored}".lstrip("/")
    assert media_path.startswith("/media/documents/")
    with pytest.raises(Resolver404):
        resolve(media_path)
    assert client.get(media_path).status_code == 404
    for path in (f"/api/v1/media/{stored}", f"/api{media_path}"):
        response = client.get(path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"


def test_with_s3_storage_it_redirects_to_a_short_lived_presigned_url(api, org, settings):
    created = upload(api, CaseFactory(organization=org), name="Müller brief.pdf")
    stored = Document.objects.get(pk=created["id"]).file.name
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "goldleaves-test",
                "region_name": "eu-central-1",
                "access_key": "AKIAEXAMPLEEXAMPLE00",
                "secret_key": "example-secret-key-not-real-0000000000000",
                "querystring_auth": True,
            },
        },
    }
    settings.DOCUMENT_URL_EXPIRE_SECONDS = 45
    # the FileField keeps the storage it was built with; a fresh read uses the new one
    from django.core.files.storage import storages

    storages._storages.pop("default", None)
    Document._meta.get_field("file").storage = storages["default"]
    try:
        response = api.get(url(created["id"]))
    finally:
        storages._storages.pop("default", None)
        from django.core.files.storage import default_storage

        Document._meta.get_field("file").storage = default_storage
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.scheme == "https" and "goldleaves-test" in location.netloc + location.path
    assert location.path == "/" + quote(stored)
    query = parse_qs(location.query)
    assert query["X-Amz-Expires"] == ["45"]
    assert query["X-Amz-Signature"]
    assert query["response-content-type"] == ["application/pdf"]
    assert query["response-content-disposition"] == [
        "attachment; filename*=utf-8''M%C3%BCller%20brief.pdf"
    ]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "private, no-store"
