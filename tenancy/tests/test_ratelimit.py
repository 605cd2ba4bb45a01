"""Plan-tier rate limits: real Redis (``@pytest.mark.redis``) and the per-process limiter."""

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from billing.models import BillingEvent
from cases.tests.factories import CaseFactory
from tenancy import ratelimit
from tenancy.context import cross_tenant, request_organization
from tenancy.testing import bearer_client, with_rate_limits
from tenancy.tests.factories import OrganizationFactory, member_of

LIMITS = {"starter": {"api": 5}, "pro": {"api": 50}}


@pytest.fixture
def small_limits(settings):
    settings.BILLING_PLANS = with_rate_limits(settings.BILLING_PLANS, LIMITS)
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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test only, on a free port: ``(url, process, client)``.

    Needs the ``redis-server`` binary (Debian package ``redis-server``; CI has it): the
    test fails, never skips, without it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: this test starts its own Redis and stops it "
            "mid-test (apt-get install redis-server)"
        )
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start: {process.stderr.read().decode()}")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", process, client
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


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
    org.plan_tier = "enterprise"  # no rate_limit in its plan: unlimited, no headers
    org.save(update_fields=["plan_tier"])
    unlimited = client.get("/api/v1/cases/")
    assert unlimited.status_code == 200
    assert "RateLimit-Limit" not in unlimited


@pytest.mark.redis
def test_exactly_n_of_n_plus_k_concurrent_http_requests_pass(
    redis_limiter, live_server, monkeypatch
):
    """N + k concurrent HTTP requests through a real server: exactly N pass.

    GCRA admits N at once and then one more every 60/N seconds (12 s for N = 5), so
    "exactly N" holds only if every request reaches the limiter within one refill
    interval. A slow machine must not stretch that window: every request of this
    organization waits at a barrier just before its limiter call (after authentication,
    the database and the middleware, the slow parts), and the test checks the window
    it actually got instead of hoping."""
    n, k = 5, 11
    org = OrganizationFactory(plan_tier="starter")
    user = member_of(org)
    CaseFactory(organization=org)
    token = bearer_client(user)._credentials["HTTP_AUTHORIZATION"]
    barrier = threading.Barrier(n + k, timeout=60)
    window = {"released": [], "answered": []}
    real_count_request = ratelimit.count_request

    def gated_count_request(request):
        organization = request_organization(request)
        if organization is None or organization.pk != org.pk:
            return real_count_request(request)
        barrier.wait()
        window["released"].append(time.monotonic())
        try:
            return real_count_request(request)
        finally:
            window["answered"].append(time.monotonic())

    monkeypatch.setattr(ratelimit, "count_request", gated_count_request)

    def call(_):
        request = urllib.request.Request(
            f"{live_server.url}/api/v1/cases/", headers={"Authorization": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                return response.status
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
            assert body["code"] == "throttled"
            return error.code

    with ThreadPoolExecutor(max_workers=n + k) as pool:
        statuses = list(pool.map(call, range(n + k)))
    assert len(window["answered"]) == n + k
    spread = max(window["answered"]) - min(window["released"])
    interval = ratelimit.PERIOD_SECONDS / n
    assert spread < interval, f"limiter calls spread over {spread:.1f} s >= {interval} s"
    assert statuses.count(200) == n
    assert statuses.count(429) == k


def test_redis_stopped_mid_test_fails_open_and_health_says_so(
    settings, small_limits, db, private_redis
):
    url, process, admin = private_redis
    settings.REDIS_URL = url
    ratelimit.reset_limiter()
    try:
        _, client = starter_client(db)
        before = [client.get("/api/v1/cases/") for _ in range(3)]
        assert [r.status_code for r in before] == [200, 200, 200]
        assert [r["RateLimit-Remaining"] for r in before] == ["4", "3", "2"]  # counted in Redis
        assert client.get("/health/").json()["redis"] == "ok"

        admin.shutdown(nosave=True)  # SHUTDOWN NOSAVE: Redis goes away mid-test
        assert process.wait(timeout=10) is not None

        after = [client.get("/api/v1/cases/") for _ in range(5)]
        # 8 requests in all, over the limit of 5, but nothing can count them: served
        assert [r.status_code for r in after] == [200] * 5
        assert all("RateLimit-Limit" not in r for r in after)
        health = client.get("/health/")
        assert health.status_code == 200
        assert health.json()["redis"] == "unavailable"
    finally:
        ratelimit.reset_limiter()


def test_redis_down_warns_once_per_interval(settings, small_limits, db, caplog, monkeypatch):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.RATE_LIMIT_WARNING_INTERVAL = 60
    ratelimit.reset_limiter()
    monkeypatch.setitem(ratelimit._last_warning, "at", float("-inf"))  # module-wide state
    now = [1000.0]
    monkeypatch.setattr(ratelimit, "clock", lambda: now[0])

    def warnings():
        return [r for r in caplog.records if "failing open" in r.getMessage()]

    try:
        _, client = starter_client(db)
        with caplog.at_level("WARNING", logger="tenancy.ratelimit"):
            assert [client.get("/api/v1/cases/").status_code for _ in range(6)] == [200] * 6
            assert len(warnings()) == 1
            now[0] += 59  # still inside the interval
            assert client.get("/api/v1/cases/").status_code == 200
            assert len(warnings()) == 1
            now[0] += 2  # 61 s after the first warning
            assert client.get("/api/v1/cases/").status_code == 200
            assert len(warnings()) == 2
            assert client.get("/api/v1/cases/").status_code == 200
            assert len(warnings()) == 2
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


# --- RateLimit headers on error responses of limited views ------------------------------------


def test_error_responses_of_limited_views_carry_the_headers(local_limiter, db):
    org, client = starter_client(db)
    member = bearer_client(member_of(org, role="member"))
    responses = [
        client.get(f"/api/v1/cases/{uuid.uuid4()}/"),  # 404
        client.post("/api/v1/cases/", {}, format="json"),  # 400 validation
        member.post("/api/v1/billing/report-usage/"),  # 403 raised by the view
    ]
    assert [r.status_code for r in responses] == [404, 400, 403]
    assert [r["RateLimit-Limit"] for r in responses] == ["5", "5", "5"]
    assert [r["RateLimit-Remaining"] for r in responses] == ["4", "3", "2"]
    assert all(0 < int(r["RateLimit-Reset"]) <= 60 for r in responses)


@pytest.mark.urls("tenancy.tests.urls_ratelimit")
def test_a_request_refused_by_a_permission_class_is_counted_and_carries_the_headers(
    local_limiter, db
):
    """The rate limit is counted before any view runs (``RateLimitMiddleware``), so a
    403 from a permission class has the headers and the limit still applies."""
    org = OrganizationFactory(plan_tier="starter")
    client = bearer_client(member_of(org))
    refused = [client.get("/api/v1/test-denied/") for _ in range(5)]
    assert [r.status_code for r in refused] == [403] * 5
    assert [r["RateLimit-Remaining"] for r in refused] == ["4", "3", "2", "1", "0"]
    over = client.get("/api/v1/test-denied/")
    assert over.status_code == 429
    assert over["RateLimit-Remaining"] == "0"
    assert int(over["Retry-After"]) >= 1


@pytest.mark.urls("tenancy.tests.urls_ratelimit")
def test_a_request_refused_by_an_object_permission_is_counted_once(local_limiter, db):
    """Each request is counted once, before the view; an object-level refusal inside the
    view (``get_object``) does not count it a second time."""
    org = OrganizationFactory(plan_tier="starter")
    user = member_of(org)
    membership = user.memberships.get()
    client = bearer_client(user)
    refused = [client.get(f"/api/v1/test-denied-object/{membership.pk}/") for _ in range(3)]
    assert [r.status_code for r in refused] == [403] * 3
    assert [r["RateLimit-Remaining"] for r in refused] == ["4", "3", "2"]


def test_unrouted_api_paths_are_counted_and_refused_over_the_limit(local_limiter, db):
    """An organization over its limit gets 429 everywhere under /api/v1/, unknown paths
    included; the unrouted 404s count against the limit and are never billed."""
    org, client = starter_client(db)
    unrouted = [client.get(path) for path in ("/api/v1/nonexistent/", "/api/v1/cases")]
    unrouted.append(client.post("/api/v1/nowhere/", {}, format="json"))
    assert [r.status_code for r in unrouted] == [404, 404, 404]
    assert [r["RateLimit-Remaining"] for r in unrouted] == ["4", "3", "2"]
    assert [client.get("/api/v1/cases/").status_code for _ in range(2)] == [200, 200]
    for path in ("/api/v1/nonexistent/", "/api/v1/cases", "/api/v1/cases/"):
        over = client.get(path)
        assert over.status_code == 429, path
        assert over.json()["code"] == "throttled"
        assert int(over["Retry-After"]) >= 1
    assert client.get("/health/").status_code == 200  # outside the API: not limited
    with cross_tenant(reason="test assertion"):
        events = BillingEvent.objects.filter(organization=org, event_name="api.request")
        assert events.count() == 2  # the two served GETs only


def test_unlimited_tiers_get_no_headers_even_on_errors(local_limiter, db):
    org = OrganizationFactory(plan_tier="enterprise")  # no rate_limit in its plan
    client = bearer_client(member_of(org))
    for response in (client.get("/api/v1/cases/"), client.get(f"/api/v1/cases/{uuid.uuid4()}/")):
        assert response.status_code in (200, 404)
        assert not [name for name in response.headers if name.lower().startswith("ratelimit")]
