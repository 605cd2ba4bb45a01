"""Login throttling of the token endpoints (``tenancy.login_throttle``), with real Redis and
with the per-process limiter."""

import os
import socket

import pytest
import redis
from rest_framework.test import APIClient

from tenancy import login_throttle, ratelimit
from tenancy.tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "local"])
def backend(request, settings):
    """Small limits (per 300 s): 3 per (address, email), 5 per email, 8 per address; the
    Redis limiter on REDIS_URL, or the per-process one."""
    settings.LOGIN_RATE_PER_ADDRESS_EMAIL = 3
    settings.LOGIN_RATE_PER_EMAIL = 5
    settings.LOGIN_RATE_PER_ADDRESS = 8
    settings.LOGIN_RATE_PERIOD_SECONDS = 300
    settings.REDIS_URL = os.environ.get("REDIS_URL", "") if request.param == "redis" else ""
    ratelimit.reset_limiter()
    yield request.param
    ratelimit.reset_limiter()


def login(email, password="wrong", address="10.0.0.1", **extra):
    return APIClient().post(
        "/api/v1/auth/token/",
        {"email": email, "password": password},
        format="json",
        REMOTE_ADDR=address,
        **extra,
    )


def assert_throttled(response):
    assert response.status_code == 429, response.content
    assert response.json()["code"] == "throttled"
    assert int(response["Retry-After"]) >= 1


def test_a_locked_pair_does_not_lock_the_account_for_other_addresses(backend, owner):
    for _ in range(3):
        assert login(owner.email).status_code == 401
    assert_throttled(login(owner.email))
    assert_throttled(login(owner.email, PASSWORD))  # the right password too, from there
    assert_throttled(login(owner.email.upper()))  # emails are compared case-insensitively
    assert login(owner.email, PASSWORD, address="10.0.0.2").status_code == 200
    assert login("someone-else@acme.test").status_code == 401  # same address, other email


def test_refused_attempts_do_not_use_up_the_emails_budget(backend, owner):
    for _ in range(20):
        login(owner.email)  # 3 counted, the rest refused by the pair bucket
    for address in ("10.0.0.2", "10.0.0.3"):
        assert login(owner.email, PASSWORD, address=address).status_code == 200


def test_an_email_attacked_from_many_addresses_is_limited(backend, owner):
    for n in range(5):
        assert login(owner.email, address=f"10.0.1.{n}").status_code == 401
    assert_throttled(login(owner.email, PASSWORD, address="10.0.2.1"))


def test_one_address_trying_many_emails_is_limited(backend, db):
    for n in range(8):
        assert login(f"user{n}@spray.test").status_code == 401
    assert_throttled(login("user99@spray.test"))
    assert login("user99@spray.test", address="10.0.0.9").status_code == 401


def test_refresh_is_limited_per_address(backend, owner):
    for _ in range(8):
        response = APIClient().post(
            "/api/v1/auth/token/refresh/", {"refresh": "bad"}, format="json", REMOTE_ADDR="10.0.0.1"
        )
        assert response.status_code == 401
    assert_throttled(
        APIClient().post(
            "/api/v1/auth/token/refresh/", {"refresh": "bad"}, format="json", REMOTE_ADDR="10.0.0.1"
        )
    )
    # the address budget is shared with the token endpoint
    assert_throttled(login("another@acme.test"))


def test_x_forwarded_for_is_ignored_by_default(backend, owner):
    for n in range(3):
        login(owner.email, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert_throttled(login(owner.email, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.200"))


def test_with_one_trusted_proxy_the_last_forwarded_address_is_the_client(backend, owner, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    for _ in range(3):
        login(owner.email, address="10.9.9.9", HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.7")
    assert_throttled(login(owner.email, address="10.9.9.9", HTTP_X_FORWARDED_FOR="198.51.100.7"))
    allowed = login(owner.email, PASSWORD, address="10.9.9.9", HTTP_X_FORWARDED_FOR="198.51.100.8")
    assert allowed.status_code == 200


def test_a_body_without_an_email_counts_against_the_address_only(backend, db):
    for _ in range(8):
        assert APIClient().post("/api/v1/auth/token/", {}, format="json").status_code == 400
    assert_throttled(APIClient().post("/api/v1/auth/token/", {}, format="json"))


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_keys_hold_neither_emails_nor_addresses(backend, owner):
    login(owner.email)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = [key.decode() for key in client.scan_iter(match=f"{login_throttle.KEY_PREFIX}:*")]
    assert len(keys) == 3  # pair, email, address
    assert not [key for key in keys if "acme" in key or "10.0.0.1" in key]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_without_redis_answering_the_limit_holds_per_process(backend, owner, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.RATE_LIMIT_REDIS_TIMEOUT = 0.05
    ratelimit.reset_limiter()
    for _ in range(3):
        assert login(owner.email).status_code == 401
    assert_throttled(login(owner.email))
    assert login_throttle._fallback._tat  # counted in this process's fallback buckets
