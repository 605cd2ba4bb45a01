"""Plan-tier rate limits: real Redis (``@pytest.mark.redis``) and the per-process limiter."""

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from billing import ratelimit
from billing.models import BillingEvent
from cases.tests.factories import CaseFactory
from conftest import bearer_client
from tenancy.context import cross_tenant
from tenancy.tests.factories import OrganizationFactory, member_of

LIMITS = {"starter": {"api": 5}, "pro": {"api": 50}}


@pytest.fixture
def small_limits(settings):
    settings.TIER_RATE_LIMITS = LIMITS
    return LIMITS


@pytest.fixture
def redis_limiter(settings, small_limits):
    """The Redis-backed limiter on the REDIS_URL the suite was given."""
    import os

    settings.REDIS_URL = os.environ["REDIS_URL"]
    ratelimit.reset_limiter()
    yield ratelimit.get_limiter()
    ratelimit.reset_limiter()


@pytest.fixture
def local_limiter(settings, small_limits):
    settings.REDIS_URL = ""
    ratelimit.reset_limiter()
    yield ratelimit.get_limiter()
    ratelimit.reset_limiter()


def starter_client(db):
    org = OrganizationFactory(plan_tier="starter")
    return org, bearer_client(member_of(org))


@pytest.mark.redis
def test_redis_limiter_admits_exactly_the_limit_under_concurrency(redis_limiter):
    assert isinstance(redis_limiter, ratelimit.RedisLimiter)
    key = f"ratelimit:test:{threading.get_ident()}:{id(redis_limiter)}"
    redis_limiter.client.delete(key)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: redis_limiter.hit(key, 10), range(40)))
    assert sum(r.allowed for r in results) == 10
    denied = [r for r in results if not r.allowed]
    assert len(denied) == 30
    assert all(r.retry_after_seconds > 0 and r.remaining == 0 for r in denied)
    redis_limiter.client.delete(key)


@pytest.mark.redis
def test_limit_headers_and_429_with_retry_after_not_billed(redis_limiter, db):
    org, client = starter_client(db)
    remaining = []
    for _ in range(5):
        response = client.get("/api/v1/cases/")
        assert response.status_code == 200
        assert response["RateLimit-Limit"] == "5"
        remaining.append(int(response["RateLimit-Remaining"]))
        assert 0 < int(response["RateLimit-Reset"]) <= 60
    assert remaining == [4, 3, 2, 1, 0]
    throttled = client.get("/api/v1/cases/")
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "throttled"
    assert 1 <= int(throttled["Retry-After"]) <= 12  # one request per 60/5 = 12 s
    assert throttled["RateLimit-Remaining"] == "0"
    with cross_tenant(reason="test assertion"):
        billed = BillingEvent.objects.filter(organization=org, event_name="api.request")
        assert billed.count() == 5  # the 429 is not billed


@pytest.mark.redis
def test_limits_are_per_organization(redis_limiter, db):
    _, client_a = starter_client(db)
    _, client_b = starter_client(db)
    for _ in range(5):
        assert client_a.get("/api/v1/cases/").status_code == 200
    assert client_a.get("/api/v1/cases/").status_code == 429
    assert client_b.get("/api/v1/cases/").status_code == 200


@pytest.mark.redis
def test_plan_change_takes_effect_without_restart(redis_limiter, db):
    org, client = starter_client(db)
    for _ in range(5):
        client.get("/api/v1/cases/")
    assert client.get("/api/v1/cases/").status_code == 429
    org.plan_tier = "pro"
    org.save(update_fields=["plan_tier"])
    response = client.get("/api/v1/cases/")
    assert response.status_code == 200
    assert response["RateLimit-Limit"] == "50"
    org.plan_tier = "enterprise"  # not in TIER_RATE_LIMITS: unlimited, no headers
    org.save(update_fields=["plan_tier"])
    unlimited = client.get("/api/v1/cases/")
    assert unlimited.status_code == 200
    assert "RateLimit-Limit" not in unlimited


@pytest.mark.redis
def test_exactly_n_of_n_plus_k_concurrent_http_requests_pass(redis_limiter, live_server):
    org = OrganizationFactory(plan_tier="starter")
    user = member_of(org)
    CaseFactory(organization=org)
    token = bearer_client(user)._credentials["HTTP_AUTHORIZATION"]

    def call(_):
        request = urllib.request.Request(
            f"{live_server.url}/api/v1/cases/", headers={"Authorization": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
            assert body["code"] == "throttled"
            return error.code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(5 + 11)))
    assert statuses.count(200) == 5
    assert statuses.count(429) == 11


@pytest.mark.redis
def test_redis_down_fails_open_and_health_says_so(settings, small_limits, db, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    ratelimit.reset_limiter()
    try:
        _, client = starter_client(db)
        with caplog.at_level("WARNING", logger="billing.ratelimit"):
            statuses = [client.get("/api/v1/cases/").status_code for _ in range(8)]
        assert statuses == [200] * 8  # over the limit of 5, but Redis is down: served
        warnings = [r for r in caplog.records if "failing open" in r.getMessage()]
        assert len(warnings) <= 1
        health = client.get("/health/")
        assert health.status_code == 200
        assert health.json()["redis"] == "unavailable"
    finally:
        ratelimit.reset_limiter()


@pytest.mark.redis
def test_health_reports_redis_ok(redis_limiter, client, db):
    assert client.get("/health/").json()["redis"] == "ok"


def test_local_limiter_without_redis(local_limiter, db, client):
    assert isinstance(local_limiter, ratelimit.LocalLimiter)
    _, api = starter_client(db)
    assert [api.get("/api/v1/cases/").status_code for _ in range(6)] == [200] * 5 + [429]
    assert client.get("/health/").json()["redis"] == "not configured"


def test_local_limiter_is_exact_under_threads(local_limiter):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: local_limiter.hit("k", 7), range(30)))
    assert sum(r.allowed for r in results) == 7
