import logging
import re
import time
import uuid

import pytest
from django.conf import settings

from core.middleware import (
    RequestIdLogFilter,
    clean_request_id,
    client_request_id_var,
    new_request_id,
    request_id_var,
    valid_client_request_id,
)


def test_middleware_order_is_request_id_timer_auth_tenant_usage():
    middleware = settings.MIDDLEWARE
    assert middleware[0:2] == [
        "core.middleware.RequestIdMiddleware",
        "core.middleware.RequestTimerMiddleware",
    ]
    wanted = [
        "core.middleware.RequestIdMiddleware",
        "core.middleware.RequestTimerMiddleware",
        "core.errors.ApiJsonErrorMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "tenancy.middleware.TenantMiddleware",
        "tenancy.ratelimit.RateLimitMiddleware",
        "billing.idempotency.middleware.IdempotencyMiddleware",
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
    assert valid_client_request_id(value) == value


@pytest.mark.parametrize("value", ["", "A" * 129, "has space", "semi;colon", "ünï", None, "a\nb"])
def test_invalid_request_id_is_replaced_by_a_uuid7(value):
    cleaned = clean_request_id(value)
    assert cleaned != value
    assert uuid.UUID(cleaned).version == 7
    assert valid_client_request_id(value) is None


def test_generated_request_ids_are_time_ordered():
    """UUIDv7s sort by creation time (so the billing unique index grows at its edge)."""
    first = clean_request_id(None)
    time.sleep(0.002)
    second = clean_request_id(None)
    assert first < second


def test_a_burst_of_ids_keeps_the_clock_and_the_order():
    """RFC 9562, 5.7 and 6.2: a UUIDv7's first 48 bits are the Unix time in ms, and ids made
    within one millisecond stay ordered by a counter, not by moving the time forward. A
    generator that adds 1 ms per id made within a millisecond (as the ``uuid6`` package
    does) would stamp the last of 20,000 ids, made in a few tens of ms, some 20 s ahead.
    The server request ids and the billing event keys share this generator."""
    from billing.ingest import event_values

    started_ms = time.time_ns() // 1_000_000
    ids = [uuid.UUID(new_request_id()) for _ in range(10_000)]
    ids += [event_values(organization_id=uuid.uuid4(), event_name="x")[0] for _ in range(10_000)]
    ended_ms = time.time_ns() // 1_000_000
    stamps = [u.int >> 80 for u in ids]
    assert started_ms <= min(stamps) and max(stamps) <= ended_ms
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {u.version for u in ids} == {7}


@pytest.mark.django_db
def test_every_request_gets_its_own_server_id_whatever_the_client_sends(client, api):
    responses = [api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="same-1") for _ in range(3)]
    responses.append(client.get("/health/"))
    server_ids = [r["X-Server-Request-ID"] for r in responses]
    assert len(set(server_ids)) == 4
    assert all(uuid.UUID(value).version == 7 for value in server_ids)
    assert [r["X-Request-ID"] for r in responses[:3]] == ["same-1"] * 3
    assert responses[3]["X-Request-ID"] == responses[3]["X-Server-Request-ID"]


@pytest.mark.django_db
def test_request_id_is_echoed_on_every_response(client, api):
    assert client.get("/health/", HTTP_X_REQUEST_ID="probe-1")["X-Request-ID"] == "probe-1"
    generated = client.get("/health/", HTTP_X_REQUEST_ID="bad id!")["X-Request-ID"]
    assert uuid.UUID(generated).version == 7
    # also on errors: 404, 401, and an authenticated API response
    assert client.get("/api/v1/nope/", HTTP_X_REQUEST_ID="r-404")["X-Request-ID"] == "r-404"
    assert client.get("/api/v1/cases/", HTTP_X_REQUEST_ID="r-401")["X-Request-ID"] == "r-401"
    assert api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="r-200")["X-Request-ID"] == "r-200"


@pytest.mark.django_db
def test_server_timing_header(client):
    header = client.get("/health/")["Server-Timing"]
    match = re.fullmatch(r"app;dur=(\d+\.\d{2})", header)
    assert match and float(match.group(1)) > 0


def _configured_root_handlers() -> list[logging.Handler]:
    """The root logger's handlers that ``settings.LOGGING`` configured (by their names;
    pytest's capture handlers on the root have none)."""
    names = set(settings.LOGGING["handlers"])
    handlers = [h for h in logging.getLogger().handlers if h.get_name() in names]
    assert {h.get_name() for h in handlers} == set(settings.LOGGING["root"]["handlers"])
    return handlers


@pytest.fixture
def reaching_configured_handlers(monkeypatch):
    """The records that reach the configured root handlers (collected in place of being
    written): whatever those handlers' filters did to them has happened."""
    records: list[logging.LogRecord] = []
    for handler in _configured_root_handlers():
        monkeypatch.setattr(handler, "emit", records.append)
    return records


def test_a_record_of_any_logger_reaching_a_configured_handler_has_the_request_id(
    reaching_configured_handlers,
):
    logger = logging.getLogger("some.library.nobody.configured")
    assert not logger.filters and not logger.handlers
    token = request_id_var.set("req-42")
    client_token = client_request_id_var.set("client-7")
    try:
        logger.warning("inside a request")
    finally:
        client_request_id_var.reset(client_token)
        request_id_var.reset(token)
    logger.warning("outside a request")
    records = [r for r in reaching_configured_handlers if r.name == logger.name]
    assert [r.request_id for r in records] == ["req-42", "-"]
    assert [r.client_request_id for r in records] == ["client-7", "-"]
    formatter = _configured_root_handlers()[0].formatter
    assert "[req-42 client-7] some.library.nobody.configured: inside a request" in (
        formatter.format(records[0])
    )


def test_extra_request_id_in_a_log_call_does_not_raise_and_is_kept(
    reaching_configured_handlers,
):
    """A record factory that always set ``request_id`` made this a ``KeyError`` ("Attempt
    to overwrite 'request_id' in LogRecord"), a 500 when logged in an except block."""
    logger = logging.getLogger("goldleaves.tests.extra")
    token = request_id_var.set("req-current")
    try:
        logger.error("x", extra={"request_id": "abc"})
    finally:
        request_id_var.reset(token)
    records = [r for r in reaching_configured_handlers if r.name == logger.name]
    assert [r.request_id for r in records] == ["abc"]


def test_every_configured_handler_has_the_request_id_filter():
    config = settings.LOGGING
    assert config["filters"]["request_id"]["()"] == "core.middleware.RequestIdLogFilter"
    for name, handler in config["handlers"].items():
        assert "request_id" in handler.get("filters", []), name
    for handler in _configured_root_handlers():
        assert any(isinstance(f, RequestIdLogFilter) for f in handler.filters), handler


def test_the_filter_fills_in_a_record_without_request_id():
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "built directly", None, None)
    assert not hasattr(outside, "request_id")
    token = request_id_var.set("req-7")
    try:
        RequestIdLogFilter().filter(outside)
    finally:
        request_id_var.reset(token)
    assert outside.request_id == "req-7"


@pytest.mark.django_db
def test_request_id_reaches_log_lines_during_a_request(
    api, monkeypatch, reaching_configured_handlers
):
    from cases import apis

    original = apis.CaseViewSet.list

    def logging_list(self, request, *args, **kwargs):
        logging.getLogger("cases.test").warning("listing cases")
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(apis.CaseViewSet, "list", logging_list)
    response = api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="trace-me")
    records = [r for r in reaching_configured_handlers if r.name == "cases.test"]
    assert [r.client_request_id for r in records] == ["trace-me"]
    assert [r.request_id for r in records] == [response["X-Server-Request-ID"]]
