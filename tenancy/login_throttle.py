"""Login throttling for the token endpoints (obtain and refresh), on the plan-tier limiter.

Three GCRA buckets (``tenancy.ratelimit``: atomic in Redis with ``REDIS_URL``, per process
without it), each ``N`` requests per ``LOGIN_RATE_PERIOD_SECONDS``:

* ``(address, email)``: ``LOGIN_RATE_PER_ADDRESS_EMAIL`` attempts for one email from one
  client address (the brute-force lock);
* ``email``: ``LOGIN_RATE_PER_EMAIL`` attempts for one email from all addresses together
  (a spread-out attack on one account); larger than the pair limit, and only attempts the
  pair bucket admitted are counted, so a pair locked out does not use up the email's
  budget: the account stays open to other addresses;
* ``address``: ``LOGIN_RATE_PER_ADDRESS`` requests to either token endpoint from one
  address (many emails from one address; refresh floods).

Every POST counts, successful or not (counting failures only would need a second,
non-atomic step after authentication). The obtain endpoint checks the pair, then the
email, then the address; refresh has no email and checks the address only. Over any
limit: 429 ``{"detail", "code": "throttled"}`` with ``Retry-After`` (seconds, RFC 9110,
10.2.3). Email and address are hashed (SHA-256) into the keys: bounded key sizes, no
addresses or emails stored in Redis.

The client address is DRF's ``BaseThrottle.get_ident``: ``REMOTE_ADDR`` unless
``REST_FRAMEWORK["NUM_PROXIES"]`` (``TRUSTED_PROXY_COUNT``) says how many proxies of ours
append to ``X-Forwarded-For``; the default, 0, never reads that header (a client can
send any value in it).

If Redis does not answer, the buckets fall back to this process's memory (logged as for
the plan-tier limiter) rather than failing open: a login limit matters most under attack.
"""

import hashlib
import math

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from tenancy.ratelimit import LocalLimiter, RateLimitResult, get_limiter, warn_unavailable

#: the process-local buckets used while Redis is unavailable
_fallback = LocalLimiter()
#: the first part of every bucket's key (tests give each test its own)
KEY_PREFIX = "login"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _hit(bucket: str, identity: str, limit: int, period: int) -> RateLimitResult:
    """One request on ``login:<bucket>:<limit>/<period>:<identity>``, in Redis or, if it
    fails, in this process."""
    key = f"{KEY_PREFIX}:{bucket}:{limit}/{period}:{identity}"
    try:
        return get_limiter().hit(key, limit, period)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: fall back to this process
        warn_unavailable(exc)
        return _fallback.hit(key, limit, period)


def normalized_email(data) -> str | None:
    """The ``email`` of a request body (a dict), stripped and lower-cased (logins are
    case-insensitive); ``None`` when there is no such string (the view answers 400)."""
    email = data.get("email") if isinstance(data, dict) else None
    if not isinstance(email, str) or not email.strip():
        return None
    return email.strip().lower()


class LoginRateThrottle(BaseThrottle):
    """DRF throttle of the token endpoints: the buckets above for each POST.

    Class attribute ``uses_email``: whether the view's body names an email (obtain: true;
    refresh: false). Settings (ints): ``LOGIN_RATE_PER_ADDRESS``, ``LOGIN_RATE_PER_EMAIL``,
    ``LOGIN_RATE_PER_ADDRESS_EMAIL``, ``LOGIN_RATE_PERIOD_SECONDS``; a limit of 0 turns
    its bucket off.
    """

    uses_email = True

    def allow_request(self, request, view) -> bool:
        """Count the POST in each bucket, in order, stopping at the first that refuses
        it; ``False`` makes DRF answer 429 with ``wait()`` as ``Retry-After``."""
        if request.method != "POST":
            return True
        period = settings.LOGIN_RATE_PERIOD_SECONDS
        address = self.get_ident(request) or ""
        for bucket, identity, limit in self.buckets(request, address):
            if not limit:
                continue
            result = _hit(bucket, identity, int(limit), int(period))
            if not result.allowed:
                self._wait = result.retry_after_seconds
                return False
        return True

    def buckets(self, request, address: str) -> list[tuple[str, str, int]]:
        """``(bucket, hashed identity, limit)`` of each bucket this POST counts in, in the
        order they are checked."""
        buckets = []
        email = normalized_email(request.data) if self.uses_email else None
        if email is not None:
            buckets.append(("pair", _digest(address, email), settings.LOGIN_RATE_PER_ADDRESS_EMAIL))
            buckets.append(("email", _digest(email), settings.LOGIN_RATE_PER_EMAIL))
        buckets.append(("address", _digest(address), settings.LOGIN_RATE_PER_ADDRESS))
        return buckets

    def wait(self) -> float | None:
        """Seconds until the refused request would be admitted, rounded up (at least 1)."""
        wait = getattr(self, "_wait", None)
        return None if wait is None else max(math.ceil(wait), 1)


class RefreshRateThrottle(LoginRateThrottle):
    """``LoginRateThrottle`` for the refresh endpoint: the address bucket only."""

    uses_email = False


class InvitationAcceptRateThrottle(LoginRateThrottle):
    """``LoginRateThrottle`` for ``POST auth/invitations/accept/``: per token (its digest),
    ``LOGIN_RATE_PER_ADDRESS_EMAIL`` attempts (an invitation to an existing account takes
    that account's password: the same brute-force lock as a login), then the shared
    per-address bucket of the token endpoints."""

    uses_email = False

    def buckets(self, request, address: str) -> list[tuple[str, str, int]]:
        token = request.data.get("token") if isinstance(request.data, dict) else None
        buckets = []
        if isinstance(token, str) and token.strip():
            buckets.append(
                ("invitation", _digest(token.strip()), settings.LOGIN_RATE_PER_ADDRESS_EMAIL)
            )
        return buckets + super().buckets(request, address)
