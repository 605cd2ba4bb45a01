import logging
import re
import uuid

import pytest
from django.conf import settings

from goldleaves.middleware import RequestIdLogFilter, clean_request_id, request_id_var


def test_middleware_order_is_request_id_timer_auth_tenant_usage():
    wanted = [
        "goldleaves.middleware.RequestIdMiddleware",
        "goldleaves.middleware.RequestTimerMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "tenancy.middleware.TenantMiddleware",
        "billing.middleware.UsageMiddleware",
    ]
    positions = [settings.MIDDLEWARE.index(name) for name in wanted]
    assert positions == sorted(positions)
    assert settings.MIDDLEWARE[-1] == "billing.middleware.UsageMiddleware"


@pytest.mark.parametrize("value", ["abc", "A" * 128, "req-1.2:3_x", "0"])
def test_valid_request_id_is_kept(value):
    assert clean_request_id(value) == value


@pytest.mark.parametrize("value", ["", "A" * 129, "has space", "semi;colon", "ünï", None, "a\nb"])
def test_invalid_request_id_is_replaced_by_uuid4(value):
    cleaned = clean_request_id(value)
    assert cleaned != value
    assert uuid.UUID(cleaned).version == 4


@pytest.mark.django_db
def test_request_id_is_echoed_on_every_response(client, api):
    assert client.get("/health/", HTTP_X_REQUEST_ID="probe-1")["X-Request-ID"] == "probe-1"
    generated = client.get("/health/", HTTP_X_REQUEST_ID="bad id!")["X-Request-ID"]
    assert uuid.UUID(generated).version == 4
    # also on errors: 404, 401, and an authenticated API response
    assert client.get("/api/v1/nope/", HTTP_X_REQUEST_ID="r-404")["X-Request-ID"] == "r-404"
    assert client.get("/api/v1/cases/", HTTP_X_REQUEST_ID="r-401")["X-Request-ID"] == "r-401"
    assert api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="r-200")["X-Request-ID"] == "r-200"


@pytest.mark.django_db
def test_server_timing_header(client):
    header = client.get("/health/")["Server-Timing"]
    match = re.fullmatch(r"app;dur=(\d+\.\d{2})", header)
    assert match and float(match.group(1)) > 0


def test_log_records_carry_the_request_id():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    token = request_id_var.set("req-42")
    try:
        RequestIdLogFilter().filter(record)
    finally:
        request_id_var.reset(token)
    assert record.request_id == "req-42"
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    RequestIdLogFilter().filter(outside)
    assert outside.request_id == "-"


@pytest.mark.django_db
def test_request_id_reaches_log_lines_during_a_request(api, caplog, monkeypatch):
    from cases import apis

    original = apis.CaseViewSet.list

    def logging_list(self, request, *args, **kwargs):
        logging.getLogger("cases.test").warning("listing cases")
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(apis.CaseViewSet, "list", logging_list)
    caplog.handler.addFilter(RequestIdLogFilter())
    with caplog.at_level(logging.WARNING, logger="cases.test"):
        api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="trace-me")
    records = [r for r in caplog.records if r.name == "cases.test"]
    assert records and records[0].request_id == "trace-me"
