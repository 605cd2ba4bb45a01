"""The API docs load from this server alone (drf-spectacular-sidecar), group operations by
resource tag, carry request/response examples, and the schema validates without warnings."""

import re

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command

from core.openapi import path_resource

pytestmark = pytest.mark.django_db

RESOURCE_TAGS = {"Auth", "Organizations", "Clients", "Cases", "Documents", "Billing"}


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_load_only_local_static_files(client, url):
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assets = _asset_urls(html)
    assert assets, html
    assert "http://" not in html and "https://" not in html  # no CDN, no web fonts
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"


def test_every_operation_has_one_resource_tag(client):
    schema = client.get("/api/schema/?format=json").json()
    assert {tag["name"] for tag in schema["tags"]} == RESOURCE_TAGS
    seen = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert len(operation["tags"]) == 1, (method, path)
            seen.setdefault(operation["tags"][0], []).append(f"{method.upper()} {path}")
    assert set(seen) == RESOURCE_TAGS
    assert "GET /api/v1/cases/" in seen["Cases"]
    assert "POST /api/v1/auth/token/" in seen["Auth"]
    assert "GET /api/v1/billing/usage-summary/{organization_id}/" in seen["Billing"]
    assert "GET /api/v1/organizations/current/" in seen["Organizations"]


def _examples(operation, where):
    if where == "request":
        content = operation["requestBody"]["content"]["application/json"]
    else:
        status = next(code for code in operation["responses"] if code.startswith("2"))
        content = operation["responses"][status]["content"]["application/json"]
    return {name: example["value"] for name, example in content.get("examples", {}).items()}


@pytest.mark.parametrize(
    "method, path, where, key",
    [
        ("post", "/api/v1/auth/token/", "request", "email"),
        ("post", "/api/v1/auth/token/", "response", "access"),
        ("get", "/api/v1/organizations/current/", "response", "role"),
        ("post", "/api/v1/clients/", "request", "name"),
        ("post", "/api/v1/clients/", "response", "id"),
        ("post", "/api/v1/cases/", "request", "client"),
        ("post", "/api/v1/cases/", "response", "closed_at"),
        ("post", "/api/v1/documents/", "response", "processing_status"),
        ("get", "/api/v1/billing/usage-summary/{organization_id}/", "response", "lines"),
    ],
)
def test_main_operations_have_examples(client, method, path, where, key):
    schema = client.get("/api/schema/?format=json").json()
    examples = _examples(schema["paths"][path][method], where)
    assert examples, f"{method.upper()} {path}: no {where} example"
    assert all(key in value for value in examples.values()), examples


def test_case_list_example_is_a_page_of_cases(client):
    schema = client.get("/api/schema/?format=json").json()
    (page,) = _examples(schema["paths"]["/api/v1/cases/"]["get"], "response").values()
    assert page["results"][0]["title"] == "Roe v. Acme Corp"


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "openapi: 3.0.3" in out.read_text()


@pytest.mark.parametrize(
    "path, resource",
    [
        ("/api/v1/cases/{id}/", "cases"),
        ("/api/v1/billing/usage-summary/{organization_id}/", "billing"),
        ("/api/v2/auth/token/", "auth"),
        ("/api/", None),
        ("/health/", "health"),
    ],
)
def test_path_resource(path, resource):
    assert path_resource(path) == resource
