"""Under /api/ every answer is JSON whatever ``Accept`` says, every Django error handler
answers in the API's error shape, and a value the database refuses (``DataError``) is a
400 that keeps the request's transaction, and its billing event, intact."""

import json

import pytest
from django.db import connection
from django.test import RequestFactory

from billing.models import BillingEvent
from cases.models import Client
from core import errors

pytestmark = pytest.mark.django_db

HTML = {"HTTP_ACCEPT": "text/html,application/xhtml+xml;q=0.9"}


def _json_error(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    assert response.json()["code"] == code, response.json()
    assert b"<html" not in response.content.lower()


def test_a_401_is_json_for_a_browser(anon_api):
    _json_error(anon_api.get("/api/v1/cases/", **HTML), 401, "not_authenticated")


def test_a_bad_token_is_a_json_401_for_a_browser(anon_api):
    response = anon_api.get("/api/v1/cases/", HTTP_AUTHORIZATION="Bearer nope", **HTML)
    _json_error(response, 401, "token_not_valid")


def test_a_success_is_json_for_a_browser(api):
    response = api.get("/api/v1/cases/", **HTML)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")


def test_the_browsable_api_is_off_without_debug(api):
    _json_error(api.get("/api/v1/cases/?format=api"), 404, "not_found")


def test_the_renderers_are_json_only_without_debug(settings):
    assert settings.DEBUG is False
    assert settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] == [
        "rest_framework.renderers.JSONRenderer"
    ]


@pytest.mark.parametrize("path", ["/api/v1/cases/", "/api/v1/nowhere/", "/health/"])
def test_a_disallowed_host_is_a_json_400(client, path):
    _json_error(client.get(path, HTTP_HOST="evil.example", **HTML), 400, "bad_request")


@pytest.fixture
def debug_renderers(settings, monkeypatch):
    """What ``DEBUG`` turns on (``make run``): the browsable API beside JSON (views read
    their renderers from ``APIView`` when the settings are imported) and Django's
    technical error pages."""
    from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
    from rest_framework.views import APIView

    settings.DEBUG = True
    monkeypatch.setattr(APIView, "renderer_classes", [JSONRenderer, BrowsableAPIRenderer])


def test_with_debug_errors_are_json_for_a_browser_and_successes_may_be_html(
    anon_api, api, debug_renderers
):
    _json_error(anon_api.get("/api/v1/cases/", **HTML), 401, "not_authenticated")
    _json_error(api.get("/api/v1/cases/?format=api&page_size=0"), 400, "invalid")
    browsable = api.get("/api/v1/cases/?format=api")
    assert browsable.status_code == 200 and browsable["Content-Type"].startswith("text/html")


def test_with_debug_a_disallowed_host_is_a_json_400_under_api_only(client, debug_renderers):
    _json_error(client.get("/api/v1/cases/", HTTP_HOST="evil.example", **HTML), 400, "bad_request")
    admin = client.get("/admin/login/", HTTP_HOST="evil.example", **HTML)
    assert admin.status_code == 400 and admin["Content-Type"].startswith("text/html")


def test_the_unknown_api_path_is_json_for_a_browser(api):
    _json_error(api.get("/api/v1/nowhere/", **HTML), 404, "not_found")


@pytest.mark.parametrize(
    "handler, args, status, code",
    [
        (errors.handler400, (None,), 400, "bad_request"),
        (errors.handler403, (None,), 403, "permission_denied"),
        (errors.handler404, (None,), 404, "not_found"),
        (errors.handler500, (), 500, "server_error"),
    ],
)
def test_django_handlers_answer_in_the_api_shape(handler, args, status, code):
    request = RequestFactory().get("/api/v1/cases/", **HTML)
    response = handler(request, *args)
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"detail", "code"} and body["code"] == code


def test_the_urlconf_uses_these_handlers():
    from goldleaves import urls

    for status in (400, 403, 404, 500):
        assert getattr(urls, f"handler{status}") == f"core.errors.handler{status}"


def _billed(org, status):
    event = BillingEvent.objects.get(organization=org, event_name="api.request")
    assert event.dimensions["status_code"] == status
    return event


@pytest.mark.parametrize(
    "query, status",
    [
        ("opened_before=0259-06-28T16:32:14%2B23:10", 200),  # the instant, in UTC
        ("opened_after=0001-01-01T00:00:00%2B05:00", 400),  # before year 1 in UTC
        ("opened_after=9999-12-31T23:59:59-05:00", 400),  # after year 9999 in UTC
        ("opened_after=not-a-date", 400),
    ],
)
def test_an_out_of_range_datetime_filter_is_a_400_not_a_500(api, org, query, status):
    response = api.get(f"/api/v1/cases/?{query}")
    assert response.status_code == status, response.content
    if status == 400:
        assert response.json()["code"] == "invalid"
        assert "opened_" in str(response.json()["errors"])
    _billed(org, status)


def test_an_offset_postgresql_cannot_take_still_filters_by_the_instant(api, org):
    from cases.tests.factories import CaseFactory

    CaseFactory(organization=org, opened_at="2026-01-01T12:00:00Z")
    # 2026-01-02T11:50+23:50 is 2026-01-01T12:00Z: the case is not before it, and is at it
    before = api.get("/api/v1/cases/?opened_before=2026-01-02T12:00:00%2B23:59")
    assert before.status_code == 200, before.content
    assert before.json()["count"] == 1
    after = api.get("/api/v1/cases/?opened_after=2026-01-02T12:00:01%2B23:59")
    assert after.json()["count"] == 0


@pytest.mark.parametrize("query", ["start=0001-01-01T00:00:00%2B05:00&end=2026-01-01"])
def test_an_out_of_range_period_is_a_400(api, org, query):
    response = api.get(f"/api/v1/billing/usage-summary/{org.pk}/?{query}")
    _json_error(response, 400, "invalid")


def test_a_data_error_inside_a_view_is_a_400_that_writes_nothing_but_its_event(
    api, org, monkeypatch
):
    from cases import apis

    def perform_create(self, serializer):
        Client.objects.create(organization=self.organization, name="half-written")
        with connection.cursor() as cursor:  # SQLSTATE 22012: a DataError, aborts
            cursor.execute("SELECT 1 / 0 FROM cases_client WHERE organization_id = %s", [org.pk])

    monkeypatch.setattr(apis.ClientViewSet, "perform_create", perform_create)
    response = api.post("/api/v1/clients/", {"name": "Jane"}, format="json")
    _json_error(response, 400, "invalid_value")
    assert not Client.objects.filter(organization=org).exists()
    _billed(org, 400)
    # the connection is usable afterwards, and the next request is billed too
    assert api.get("/api/v1/clients/").status_code == 200
    assert BillingEvent.objects.filter(organization=org, event_name="api.request").count() == 2
