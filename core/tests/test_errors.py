import pytest
from django.db import connection
from django.test import override_settings


@pytest.mark.django_db
def test_health_ok(client):
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_health_503_when_the_database_does_not_answer(client, monkeypatch):
    # Point the connection at a port where nothing listens, for this request only.
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "HOST", "127.0.0.1")
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    try:
        response = client.get("/health/")
    finally:
        connection.close()
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["database"] == "unavailable"


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
def test_schema_declares_bearer_jwt_and_docs_serve(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    body = schema.json()
    scheme = body["components"]["securitySchemes"]["jwtAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "/api/v1/cases/" in body["paths"]
    assert client.get("/api/docs/").status_code == 200
