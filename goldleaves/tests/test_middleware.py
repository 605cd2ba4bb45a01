import logging
import re
import uuid

import pytest
from django.conf import settings

from goldleaves.middleware import RequestIdLogFilter, clean_request_id, request_id_var


def test_middleware_order_is_request_id_timer_auth_tenant_usage():
    middleware = settings.MIDDLEWARE
    assert middleware[0:2] == [
        "goldleaves.middleware.RequestIdMiddleware",
        "goldleaves.middleware.RequestTimerMiddleware",
    ]
    wanted = [
        "goldleaves.middleware.RequestIdMiddleware",
        "goldleaves.middleware.RequestTimerMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "tenancy.middleware.TenantMiddleware",
        "billing.middleware.UsageMiddleware",
    ]
    positions = [middleware.index(name) for name in wanted]
    assert positions == sorted(positions)
    assert middleware.index("tenancy.middleware.TenantMiddleware") > middleware.index(
        "django.contrib.auth.middleware.AuthenticationMiddleware"
    )
    assert middleware[-1] == "billing.middleware.UsageMiddleware"


def test_security_middleware_redirects_carry_the_request_id_and_timing(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # read when the client's handler loads middleware
    response = client.get("/health/", HTTP_X_REQUEST_ID="redirected-1")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
    assert response["X-Request-ID"] == "redirected-1"
    assert response["Server-Timing"].startswith("app;dur=")


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


def test_every_log_record_carries_the_request_id_with_no_filter_anywhere():
    """Any logger, any handler: the record factory sets ``request_id`` on creation."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("goldleaves.tests.unfiltered")
    handler = Collect()
    assert not handler.filters and not logger.filters
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = request_id_var.set("req-42")
        try:
            logger.warning("inside a request")
        finally:
            request_id_var.reset(token)
        logger.warning("outside a request")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r.request_id for r in records] == ["req-42", "-"]
    line = logging.Formatter("[%(request_id)s] %(message)s").format(records[0])
    assert line == "[req-42] inside a request"


def test_the_record_factory_is_installed_once():
    from goldleaves.middleware import install_request_id_log_records

    factory = logging.getLogRecordFactory()
    assert getattr(factory, "adds_request_id", False)
    install_request_id_log_records()
    assert logging.getLogRecordFactory() is factory


def test_the_filter_fills_in_records_made_without_the_factory():
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "built directly", None, None)
    assert not hasattr(outside, "request_id")
    token = request_id_var.set("req-7")
    try:
        RequestIdLogFilter().filter(outside)
    finally:
        request_id_var.reset(token)
    assert outside.request_id == "req-7"


@pytest.mark.django_db
def test_request_id_reaches_log_lines_during_a_request(api, caplog, monkeypatch):
    from cases import apis

    original = apis.CaseViewSet.list

    def logging_list(self, request, *args, **kwargs):
        logging.getLogger("cases.test").warning("listing cases")
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(apis.CaseViewSet, "list", logging_list)
    # Only caplog's handler (no RequestIdLogFilter) sees the record: it does not reach the
    # root's console handler, whose filter would otherwise add the attribute first.
    assert not any(isinstance(f, RequestIdLogFilter) for f in caplog.handler.filters)
    logger = logging.getLogger("cases.test")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="cases.test"):
            api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="trace-me")
    finally:
        logger.removeHandler(caplog.handler)
    records = [r for r in caplog.records if r.name == "cases.test"]
    assert records and records[0].request_id == "trace-me"
