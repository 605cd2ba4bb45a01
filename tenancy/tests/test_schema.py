"""The OpenAPI schema documents the bearer JWT (``tenancy.schema``) and the docs serve."""

import pytest


@pytest.mark.django_db
def test_schema_declares_bearer_jwt_and_docs_serve(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    body = schema.json()
    scheme = body["components"]["securitySchemes"]["jwtAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "/api/v1/cases/" in body["paths"]
    assert client.get("/api/docs/").status_code == 200
