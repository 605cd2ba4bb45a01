"""``Idempotency-Key`` on multipart and refused bodies: the fingerprint parses a multipart body only
for a view that reads one (the document upload), so a multipart write to a JSON endpoint
is answered as it is without a key (415); the files of one field count in the order
they were sent; and a body refused for its size or its number of parts gets the same JSON
error with a key as without one."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from billing.models import BillingEvent
from cases.models import Client, Document
from cases.tests.factories import CaseFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


def text_file(content: bytes, name: str = "a.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, "text/plain")


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_a_multipart_write_to_a_json_endpoint_is_415_with_or_without_a_key(api, org, method):
    kept = Client.objects.create(organization=org, name="Kept")
    url = "/api/v1/clients/" if method == "post" else f"/api/v1/clients/{kept.pk}/"
    answers = []
    for headers in ({}, {"HTTP_IDEMPOTENCY_KEY": f"mp-{method}"}):
        body = {"name": "Multipart", "f": text_file(b"hi\n")}
        answers.append(getattr(api, method)(url, body, format="multipart", **headers))
    for response in answers:
        assert response.status_code == 415, response.content
        assert response.json()["code"] == "unsupported_media_type"
    kept.refresh_from_db()
    assert kept.name == "Kept"
    assert not Client.objects.filter(name="Multipart").exists()
    assert BillingEvent.objects.filter(event_name="api.request").count() == 2  # as served
    replay = getattr(api, method)(
        url,
        {"name": "Multipart", "f": text_file(b"hi\n")},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY=f"mp-{method}",
    )
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (415, "true")


def test_the_order_of_one_fields_files_is_part_of_an_uploads_fingerprint(api, org):
    """An upload keeps the last part of its ``file`` field: [X, Y] stores Y and [Y, X]
    stores X, so under one key the second is another request (422), not a replay."""
    case = CaseFactory(organization=org)
    x, y = b"the file X\n", b"the longer file Y\n"

    def upload(first: bytes, second: bytes):
        return api.post(
            "/api/v1/documents/",
            {"case": str(case.pk), "file": [text_file(first), text_file(second)]},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="two-files",
        )

    stored = upload(x, y)
    assert stored.status_code == 201, stored.content
    assert stored.json()["size_bytes"] == len(y)
    assert upload(x, y)["Idempotent-Replayed"] == "true"
    swapped = upload(y, x)
    assert swapped.status_code == 422
    assert swapped.json()["code"] == "idempotency_key_reused"
    assert Document.objects.count() == 1


@pytest.mark.parametrize("key", [None, "many-files"])
def test_too_many_files_is_the_same_400_with_or_without_a_key(api, org, settings, key):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    case = CaseFactory(organization=org)
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = api.post(
        "/api/v1/documents/",
        {"case": str(case.pk), "file": [text_file(b"%d\n" % i) for i in range(4)]},
        format="multipart",
        **headers,
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "too_many_fields"
    assert Document.objects.count() == 0


@pytest.mark.parametrize("key", [None, "too-big"])
def test_a_body_over_the_limit_is_a_json_413_with_or_without_a_key(api, settings, key):
    settings.API_MAX_JSON_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = api.post("/api/v1/clients/", {"name": "x" * 2000}, format="json", **headers)
    assert response.status_code == 413, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "body_too_large"
    assert not Client.objects.exists()
