"""Every cases endpoint and method: the owner's organization works, an outsider
organization gets 404 (400 for cross-tenant ids in bodies), no token gets 401."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from cases.models import Case, Client, Document
from cases.tests.factories import CaseFactory, ClientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def client_obj(org):
    return ClientFactory(organization=org, name="Jane Roe")


@pytest.fixture
def case_obj(org, client_obj):
    return CaseFactory(organization=org, client=client_obj, title="Roe v. Wade")


@pytest.fixture
def document_obj(api, case_obj):
    upload = SimpleUploadedFile("brief.txt", b"hello\nworld\n", content_type="text/plain")
    response = api.post(
        "/api/v1/documents/", {"case": str(case_obj.pk), "file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content
    return Document.objects.get(pk=response.json()["id"])


def objects(request, kind):
    return request.getfixturevalue(
        {"clients": "client_obj", "cases": "case_obj", "documents": "document_obj"}[kind]
    )


UPDATES = {
    "clients": {"name": "Renamed"},
    "cases": {"title": "Renamed"},
    "documents": {},
}


@pytest.mark.parametrize("kind", ["clients", "cases", "documents"])
def test_owner_can_list_and_retrieve(request, api, kind):
    obj = objects(request, kind)
    listing = api.get(f"/api/v1/{kind}/")
    assert listing.status_code == 200
    assert [row["id"] for row in listing.json()["results"]] == [str(obj.pk)]
    detail = api.get(f"/api/v1/{kind}/{obj.pk}/")
    assert detail.status_code == 200
    assert detail.json()["id"] == str(obj.pk)


@pytest.mark.parametrize("kind", ["clients", "cases", "documents"])
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_outsider_gets_404_for_every_method(request, outsider_api, kind, method):
    obj = objects(request, kind)
    model = type(obj)
    response = getattr(outsider_api, method)(
        f"/api/v1/{kind}/{obj.pk}/", UPDATES[kind], format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert model.objects.filter(pk=obj.pk).exists()
    if kind != "documents":
        field, value = next(iter(UPDATES[kind].items()))
        assert getattr(model.objects.get(pk=obj.pk), field) != value


@pytest.mark.parametrize("kind", ["clients", "cases", "documents"])
def test_outsider_list_never_shows_other_organizations_rows(request, outsider_api, kind):
    objects(request, kind)
    response = outsider_api.get(f"/api/v1/{kind}/")
    assert response.status_code == 200
    assert response.json()["count"] == 0


@pytest.mark.parametrize("kind", ["clients", "cases", "documents"])
@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_no_token_is_401(request, anon_api, kind, method):
    obj = objects(request, kind)
    path = f"/api/v1/{kind}/" if method == "post" else f"/api/v1/{kind}/{obj.pk}/"
    response = getattr(anon_api, method)(path, {}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_client_crud(api, org):
    created = api.post(
        "/api/v1/clients/", {"name": "Acme Corp", "email": "legal@acme.test"}, format="json"
    )
    assert created.status_code == 201
    pk = created.json()["id"]
    assert Client.objects.get(pk=pk).organization == org
    assert (
        api.patch(f"/api/v1/clients/{pk}/", {"phone": "555"}, format="json").json()["phone"]
        == "555"
    )
    put = api.put(f"/api/v1/clients/{pk}/", {"name": "Acme Inc"}, format="json")
    assert put.status_code == 200 and put.json()["name"] == "Acme Inc"
    assert api.delete(f"/api/v1/clients/{pk}/").status_code == 204
    assert not Client.objects.filter(pk=pk).exists()


def test_client_validation_errors_are_400(api):
    response = api.post("/api/v1/clients/", {"email": "not-an-email"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert set(body["errors"]) == {"name", "email"}


def test_client_with_cases_cannot_be_deleted(api, case_obj, client_obj):
    response = api.delete(f"/api/v1/clients/{client_obj.pk}/")
    assert response.status_code == 400
    assert "still has cases" in str(response.json())
    assert Client.objects.filter(pk=client_obj.pk).exists()


def test_case_crud_and_closing(api, org, client_obj):
    created = api.post(
        "/api/v1/cases/",
        {"client": str(client_obj.pk), "title": "Matter", "reference_number": "GL-1"},
        format="json",
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    assert Case.objects.get(pk=pk).organization == org
    closed = api.patch(f"/api/v1/cases/{pk}/", {"status": "closed"}, format="json")
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    reopened = api.patch(f"/api/v1/cases/{pk}/", {"status": "open"}, format="json")
    assert reopened.json()["closed_at"] is None
    assert api.delete(f"/api/v1/cases/{pk}/").status_code == 204
    assert not Case.objects.filter(pk=pk).exists()


def test_owner_put_replaces_a_case(api, org, case_obj):
    new_client = ClientFactory(organization=org, name="New Client")
    payload = {
        "client": str(new_client.pk),
        "title": "Replaced title",
        "reference_number": "PUT-1",
        "status": "pending",
        "description": "full update",
        "opened_at": "2026-01-02T03:04:05Z",
    }
    response = api.put(f"/api/v1/cases/{case_obj.pk}/", payload, format="json")
    assert response.status_code == 200, response.content
    case_obj.refresh_from_db()
    assert (
        case_obj.client_id,
        case_obj.title,
        case_obj.reference_number,
        case_obj.status,
        case_obj.description,
        case_obj.opened_at.isoformat(),
    ) == (
        new_client.pk,
        "Replaced title",
        "PUT-1",
        "pending",
        "full update",
        "2026-01-02T03:04:05+00:00",
    )
    # PUT is a full replacement: a missing required field is a 400 and changes nothing
    partial = api.put(f"/api/v1/cases/{case_obj.pk}/", {"title": "Only title"}, format="json")
    assert partial.status_code == 400
    assert {"client", "reference_number"} <= set(partial.json()["errors"])
    case_obj.refresh_from_db()
    assert case_obj.title == "Replaced title"


def test_owner_put_with_another_organizations_client_is_400(api, case_obj, outsider_org):
    foreign = ClientFactory(organization=outsider_org)
    payload = {"client": str(foreign.pk), "title": "T", "reference_number": "PUT-X"}
    response = api.put(f"/api/v1/cases/{case_obj.pk}/", payload, format="json")
    assert response.status_code == 400
    assert "client" in response.json()["errors"]
    case_obj.refresh_from_db()
    assert case_obj.reference_number != "PUT-X"


def test_case_with_another_organizations_client_is_400(api, outsider_org):
    foreign = ClientFactory(organization=outsider_org)
    response = api.post(
        "/api/v1/cases/",
        {"client": str(foreign.pk), "title": "x", "reference_number": "X-1"},
        format="json",
    )
    assert response.status_code == 400
    assert "client" in response.json()["errors"]
    assert not Case.objects.filter(reference_number="X-1").exists()


def test_moving_a_case_to_another_organizations_client_is_400(api, case_obj, outsider_org):
    foreign = ClientFactory(organization=outsider_org)
    response = api.patch(
        f"/api/v1/cases/{case_obj.pk}/", {"client": str(foreign.pk)}, format="json"
    )
    assert response.status_code == 400
    case_obj.refresh_from_db()
    assert case_obj.client.organization_id == case_obj.organization_id


def test_reference_number_is_unique_per_organization(api, outsider_api, client_obj, outsider_org):
    payload = {"client": str(client_obj.pk), "title": "A", "reference_number": "DUP-1"}
    assert api.post("/api/v1/cases/", payload, format="json").status_code == 201
    again = api.post("/api/v1/cases/", payload, format="json")
    assert again.status_code == 400
    assert "reference_number" in again.json()["errors"]
    other_client = ClientFactory(organization=outsider_org)
    other = outsider_api.post(
        "/api/v1/cases/",
        {"client": str(other_client.pk), "title": "B", "reference_number": "DUP-1"},
        format="json",
    )
    assert other.status_code == 201


def test_case_filters_search_ordering_and_pagination(api, org, client_obj):
    other_client = ClientFactory(organization=org)
    CaseFactory(
        organization=org,
        client=client_obj,
        title="Alpha dispute",
        reference_number="A-1",
        status="open",
        opened_at="2026-01-10T00:00:00Z",
    )
    CaseFactory(
        organization=org,
        client=client_obj,
        title="Beta merger",
        reference_number="B-2",
        status="closed",
        opened_at="2026-02-10T00:00:00Z",
    )
    CaseFactory(
        organization=org,
        client=other_client,
        title="Gamma lease",
        reference_number="G-3",
        status="pending",
        opened_at="2026-03-10T00:00:00Z",
    )

    def refs(query):
        response = api.get(f"/api/v1/cases/{query}")
        assert response.status_code == 200, response.content
        return [row["reference_number"] for row in response.json()["results"]]

    assert refs("?status=closed") == ["B-2"]
    assert refs(f"?client={other_client.pk}") == ["G-3"]
    assert refs("?opened_after=2026-02-01T00:00:00Z&opened_before=2026-03-10T00:00:00Z") == ["B-2"]
    assert refs("?search=merger") == ["B-2"]
    assert refs("?search=g-3") == ["G-3"]
    assert refs("?ordering=reference_number") == ["A-1", "B-2", "G-3"]
    assert refs("?ordering=-opened_at") == ["G-3", "B-2", "A-1"]
    page = api.get("/api/v1/cases/?page_size=2&ordering=reference_number").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert api.get("/api/v1/cases/?status=bogus").status_code == 400


def test_document_upload_records_metadata(api, org, case_obj, owner, document_obj):
    assert document_obj.organization == org
    assert document_obj.original_filename == "brief.txt"
    assert document_obj.content_type == "text/plain"
    assert document_obj.size_bytes == len(b"hello\nworld\n")
    assert document_obj.uploaded_by == owner
    assert document_obj.file.read() == b"hello\nworld\n"
    assert api.get(f"/api/v1/documents/?case={case_obj.pk}").json()["count"] == 1


def test_document_upload_to_another_organizations_case_is_400(api, outsider_org):
    foreign_case = CaseFactory(organization=outsider_org)
    upload = SimpleUploadedFile("x.txt", b"x", content_type="text/plain")
    response = api.post(
        "/api/v1/documents/", {"case": str(foreign_case.pk), "file": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert "case" in response.json()["errors"]
    assert not Document.objects.exists()


def test_document_without_file_is_400(api, case_obj):
    response = api.post("/api/v1/documents/", {"case": str(case_obj.pk)}, format="multipart")
    assert response.status_code == 400
    assert "file" in response.json()["errors"]


def test_owner_put_moves_a_document_and_keeps_its_file(
    api, org, document_obj, client_obj, outsider_org
):
    other_case = CaseFactory(organization=org, client=client_obj)
    response = api.put(
        f"/api/v1/documents/{document_obj.pk}/", {"case": str(other_case.pk)}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["case"] == str(other_case.pk)
    document_obj.refresh_from_db()
    assert document_obj.case_id == other_case.pk
    assert document_obj.file.read() == b"hello\nworld\n"
    foreign_case = CaseFactory(organization=outsider_org)
    refused = api.put(
        f"/api/v1/documents/{document_obj.pk}/", {"case": str(foreign_case.pk)}, format="json"
    )
    assert refused.status_code == 400
    assert "case" in refused.json()["errors"]
    missing = api.put(f"/api/v1/documents/{document_obj.pk}/", {}, format="json")
    assert missing.status_code == 400
    document_obj.refresh_from_db()
    assert document_obj.case_id == other_case.pk


def test_document_move_and_delete(
    api, org, document_obj, client_obj, outsider_org, django_capture_on_commit_callbacks
):
    other_case = CaseFactory(organization=org, client=client_obj)
    moved = api.patch(
        f"/api/v1/documents/{document_obj.pk}/", {"case": str(other_case.pk)}, format="json"
    )
    assert moved.status_code == 200 and moved.json()["case"] == str(other_case.pk)
    foreign_case = CaseFactory(organization=outsider_org)
    refused = api.patch(
        f"/api/v1/documents/{document_obj.pk}/", {"case": str(foreign_case.pk)}, format="json"
    )
    assert refused.status_code == 400
    name = document_obj.file.name
    storage = document_obj.file.storage
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/documents/{document_obj.pk}/").status_code == 204
    assert not Document.objects.filter(pk=document_obj.pk).exists()
    assert not storage.exists(name)
