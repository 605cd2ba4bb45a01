"""API errors are JSON in one shape (``core.errors``), even outside DRF and with DEBUG off."""

import pytest
from django.test import override_settings


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_unknown_api_path_is_a_json_404(client, debug):
    with override_settings(DEBUG=debug):
        response = client.get("/api/v1/does-not-exist/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


@pytest.mark.django_db
def test_unhandled_exception_is_a_json_500_with_debug_off(api, monkeypatch):
    from cases import apis

    def boom(self, request, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(apis.CaseViewSet, "list", boom)
    api.raise_request_exception = False
    with override_settings(DEBUG=False):
        response = api.get("/api/v1/cases/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}


@pytest.mark.django_db
def test_a_chunked_body_without_content_length_is_411_and_nothing_runs(api):
    from billing.models import BillingEvent
    from cases.models import Client

    # generic() with an empty body sets no CONTENT_LENGTH, as gunicorn for a chunked one
    response = api.generic(
        "POST", "/api/v1/clients/", b"", "application/json", HTTP_TRANSFER_ENCODING="chunked"
    )
    assert "CONTENT_LENGTH" not in response.wsgi_request.META
    assert response.status_code == 411
    assert response.json()["code"] == "length_required"
    assert not Client.objects.exists()
    assert not BillingEvent.objects.exists()  # nothing was served
    sized = api.post("/api/v1/clients/", {"name": "Sized"}, format="json")
    assert sized.status_code == 201


def test_the_schema_documents_the_411_on_every_operation_with_a_body(client):
    schema = client.get("/api/schema/?format=json").json()
    with_body = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("post", "put", "patch")
    ]
    assert len(with_body) > 10
    for path, method, operation in with_body:
        answer = operation["responses"].get("411")
        assert answer is not None, (method, path)
        example = answer["content"]["application/json"]["example"]
        assert example["code"] == "length_required", (method, path)
