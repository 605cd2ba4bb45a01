"""Plan-tier rate limits: requests per minute per organization and scope.

The limit comes from the ``rate_limit`` of the organization's plan in
``settings.BILLING_PLANS`` (``{"starter": {"rate_limit": {"api": 60}, ...}, ...}``; see
``billing.plans``, read here as a setting because tenancy imports no billing code) and
the organization's *current* ``plan_tier`` (read with the membership on every
request, so a plan change takes effect without a restart); a tier or scope that is
not listed is unlimited.

Algorithm: GCRA (generic cell rate algorithm, the "virtual scheduling" form of the
leaky bucket, as in ITU-T I.371): each organization has a theoretical arrival time
(TAT); a request is admitted if ``TAT - period <= now``, which allows a burst of
``limit`` requests and then one every ``period / limit`` seconds. It needs one value
per key and no clean-up.

Backends:

* ``RedisLimiter`` (``REDIS_URL`` set): one atomic Lua script per request (one round
  trip; Redis runs a script atomically, and it reads the clock with ``TIME`` so every
  process and host shares one clock). Exact across any number of processes.
* ``LocalLimiter`` (no ``REDIS_URL``): the same algorithm in this process's memory,
  behind a lock. **Development only**: each process counts on its own.

If Redis does not answer, requests are admitted (fail open): a rate limit is worth
less than the API being up. A warning is logged at most once per
``RATE_LIMIT_WARNING_INTERVAL`` seconds and ``/health/`` shows ``"redis": "unavailable"``.

Headers follow the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Limit`` (requests per window),
``RateLimit-Remaining`` (requests left now), ``RateLimit-Reset`` (seconds until the
quota is whole again); a 429 also carries ``Retry-After`` (RFC 9110, 10.2.3), seconds.
``RateLimitMiddleware`` counts each request once, before the view, and adds them to every
counted response, error responses included (400 validation, 403 from a permission, a 404
of a missing object or of an unrouted path, an ``Idempotency-Key`` replay or refusal).

Which responses carry NO RateLimit headers, on purpose:

* An organization whose plan has no limit for the scope in its ``rate_limit`` (the
  default ``enterprise`` plan): the fields advertise a quota policy that applies to the request
  (draft -06, whose field names these are), they are not a mandatory part of every
  response, and with no quota there is nothing to advertise; a made-up limit would
  invite clients to throttle themselves for nothing. Clients read "no RateLimit
  headers" as "not limited".
* Requests with no organization (anonymous, the token endpoints): not limited here.
* Fail open: while Redis is unavailable nothing was counted, so nothing is claimed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.http import JsonResponse

from tenancy.context import request_organization

logger = logging.getLogger("tenancy.ratelimit")

PERIOD_SECONDS = 60
SCOPE = "api"
RATE_LIMIT_ATTR = "rate_limit"

#: Monotonic seconds (float) for the per-process limiter and the warning interval;
#: tests replace it to move time forward. Redis uses its own clock (``TIME``).
clock = time.monotonic


@dataclass(frozen=True)
class RateLimitResult:
    """The outcome of one request against a limit.

    ``limit``: requests per ``PERIOD_SECONDS``; ``remaining``: requests still admitted
    now; ``reset_seconds``: until the quota is whole again; ``retry_after_seconds``:
    until the next request is admitted (0 when this one was).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float

    def headers(self) -> dict[str, str]:
        """The draft-ietf-httpapi-ratelimit-headers fields (whole seconds, rounded up)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(self.remaining, 0)),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
        }


def _result(
    allowed: bool, limit: int, tat_minus_now: float, retry: float, period: float = PERIOD_SECONDS
) -> RateLimitResult:
    interval = period / limit
    remaining = int((period - tat_minus_now) // interval) if allowed else 0
    return RateLimitResult(
        allowed=allowed,
        limit=limit,
        remaining=max(min(remaining, limit), 0),
        reset_seconds=max(tat_minus_now, 0.0),
        retry_after_seconds=max(retry, 0.0),
    )


# KEYS[1]: the counter key. ARGV[1]: limit (requests), ARGV[2]: period (seconds).
# Returns {allowed (0/1), tat - now (s, string), retry after (s, string)}.
GCRA_LUA = """
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if allow_at > now then
  return {0, tostring(tat - now), tostring(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(new_tat - now), '0'}
"""


class LocalLimiter:
    """GCRA in this process's memory. Development only: not shared between processes."""

    backend = "local"

    def __init__(self):
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int, period: int = PERIOD_SECONDS) -> RateLimitResult:
        """Count one request on ``key`` against ``limit`` per ``period`` seconds."""
        now = clock()
        interval = period / limit
        with self._lock:
            tat = max(self._tat.get(key, now), now)
            new_tat = tat + interval
            allow_at = new_tat - period
            if allow_at > now:
                return _result(False, limit, tat - now, allow_at - now, period)
            self._tat[key] = new_tat
        return _result(True, limit, new_tat - now, 0.0, period)


class RedisLimiter:
    """GCRA in Redis: one ``EVALSHA`` of ``GCRA_LUA`` per request, atomic across processes.

    Raises:
        redis.exceptions.RedisError: Redis did not answer (``count_request`` fails open).
    """

    backend = "redis"

    def __init__(self, url: str):
        import redis

        timeout = getattr(settings, "RATE_LIMIT_REDIS_TIMEOUT", 0.25)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.script = self.client.register_script(GCRA_LUA)

    def hit(self, key: str, limit: int, period: int = PERIOD_SECONDS) -> RateLimitResult:
        """Count one request on ``key`` against ``limit`` requests per ``period`` seconds,
        atomically across every process (one ``EVALSHA`` round trip; ``EVAL`` once if
        Redis does not have the script yet).

        Args:
            key: the Redis key of the bucket (one per organization, scope and limit).
            limit: requests per ``period``, > 0.
            period: seconds (default ``PERIOD_SECONDS``, a minute).
        Returns:
            the ``RateLimitResult`` (admitted or not, remaining, reset, retry-after).
        Raises:
            redis.exceptions.RedisError: Redis is unreachable or timed out
                (``RATE_LIMIT_REDIS_TIMEOUT`` seconds); the caller fails open.
        """
        allowed, tat_minus_now, retry = self.script(keys=[key], args=[limit, period])
        return _result(bool(allowed), limit, float(tat_minus_now), float(retry), period)


_limiter: LocalLimiter | RedisLimiter | None = None
_limiter_lock = threading.Lock()
_last_warning = {"at": float("-inf")}


def get_limiter() -> LocalLimiter | RedisLimiter:
    """The process's limiter for ``settings.REDIS_URL`` (created once, lazily)."""
    global _limiter
    if _limiter is None:
        with _limiter_lock:
            if _limiter is None:
                url = settings.REDIS_URL
                _limiter = RedisLimiter(url) if url else LocalLimiter()
    return _limiter


def reset_limiter() -> None:
    """Forget the limiter (after ``REDIS_URL`` changed: tests, reconfiguration)."""
    global _limiter
    with _limiter_lock:
        _limiter = None


def redis_state() -> str:
    """``"ok"``, ``"unavailable"`` or ``"not configured"``, checked now with a PING.

    For ``/health/``; never raises.
    """
    if not settings.REDIS_URL:
        return "not configured"
    limiter = get_limiter()
    try:
        limiter.client.ping()
    except Exception:  # noqa: BLE001 - any failure means unavailable
        return "unavailable"
    return "ok"


def tier_limit(organization, scope: str = SCOPE) -> int | None:
    """Requests per minute for ``organization``'s plan (``BILLING_PLANS[plan_tier]
    ["rate_limit"][scope]``); ``None`` = unlimited (no plan, or no limit for ``scope``)."""
    plans = getattr(settings, "BILLING_PLANS", None)
    plan = plans.get(organization.plan_tier) if isinstance(plans, dict) else None
    limits = plan.get("rate_limit") if isinstance(plan, dict) else None
    limit = limits.get(scope) if isinstance(limits, dict) else None
    # A malformed value is refused at start-up (system check billing.E005); never a 500 here.
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def warn_unavailable(exc: Exception) -> None:
    """Log "Redis unavailable, failing open" at most once per
    ``RATE_LIMIT_WARNING_INTERVAL`` seconds per process (``_last_warning``, by ``clock``)."""
    interval = getattr(settings, "RATE_LIMIT_WARNING_INTERVAL", 60)
    now = clock()
    if now - _last_warning["at"] >= interval:
        _last_warning["at"] = now
        logger.warning("rate limits not enforced: Redis unavailable (%s); failing open", exc)


def count_request(request) -> RateLimitResult | None:
    """Count ``request`` (a Django ``HttpRequest``) against its organization's plan-tier
    limit; return the ``RateLimitResult``, or ``None`` when nothing was counted.

    Counted: every request with an organization (set by ``TenantMiddleware``) whose path
    starts with one of ``settings.API_ROUTES``, routed or not, whatever its method or
    outcome. Not counted (``None``): no organization (anonymous, the token endpoints), a
    path outside the API, an unlimited tier, and a limiter failure (Redis down: fail
    open, warning logged at most once per ``RATE_LIMIT_WARNING_INTERVAL``).
    """
    organization = request_organization(request)
    if organization is None:
        return None
    if not any(request.path_info.startswith(prefix) for prefix in settings.API_ROUTES):
        return None
    limit = tier_limit(organization)
    if limit is None:
        return None
    try:
        # The limit is part of the key: after a plan change the organization starts a
        # fresh bucket at its new rate instead of inheriting the old rate's schedule.
        return get_limiter().hit(f"ratelimit:{SCOPE}:{organization.pk}:{limit}", limit)
    except Exception as exc:  # noqa: BLE001 - fail open on any Redis failure
        warn_unavailable(exc)
        return None


def throttled_response(result: RateLimitResult) -> JsonResponse:
    """The ``429`` of a refused request: ``{"detail", "code": "throttled"}`` (the body DRF's
    ``Throttled`` gave) with ``Retry-After`` in whole seconds, rounded up (RFC 9110,
    10.2.3)."""
    wait = max(math.ceil(result.retry_after_seconds), 1)
    response = JsonResponse(
        {
            "detail": f"Request was throttled. Expected available in {wait} seconds.",
            "code": "throttled",
        },
        status=429,
    )
    response["Retry-After"] = str(wait)
    return response


class RateLimitMiddleware:
    """Plan-tier rate limit of every tenant API request (``count_request``), before
    anything else runs for it: over the limit the answer is ``throttled_response`` (429,
    not billed: the usage middleware never sees it) and neither the view nor an
    ``Idempotency-Key`` replay runs. Placed right after ``TenantMiddleware`` (it needs
    the request's organization), so unrouted paths, replays and the idempotency middleware's
    own answers are counted like any other request. Every counted response (errors
    included) carries the RateLimit header fields (``RateLimitResult.headers``); the
    result is also left on the request as ``request.rate_limit``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        result = count_request(request)
        if result is None:
            return self.get_response(request)
        setattr(request, RATE_LIMIT_ATTR, result)
        if result.allowed:
            response = self.get_response(request)
        else:
            response = throttled_response(result)
        for name, value in result.headers().items():
            response[name] = value
        return response
