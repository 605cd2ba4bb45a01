"""Usage middleware: one ``api.request`` billing event per billable request.

Placement: last in ``settings.MIDDLEWARE``, after ``tenancy.middleware.TenantMiddleware``.
It therefore runs, after the view, INSIDE the request's transaction and tenant
context: the event commits together with the request's own writes (and is rolled
back with them on a 5xx), and row-level security applies to it.

Failure policy: a failure to write the event never turns a response into
a 500. The write runs in a savepoint; if it raises a database error, the savepoint
(only) is rolled back, so the request's own writes stay intact and still commit,
and the failure is logged at ERROR (with the request id, through the log filter)
and counted in ``write_failures()`` (per process; reported by
``GET /api/v1/billing/health/``). We chose "serve and alert" over "fail the
request": the client's operation succeeded and retrying it would repeat it; the
lost event is visible in the logs and the counter.

The event's ``request_id`` is the server's id of the request (``request.request_id``, a
UUIDv7 minted by ``RequestIdMiddleware`` for every physical request), so every request
served is billed exactly once whatever the client sends; the client's ``X-Request-ID`` is
only copied into ``dimensions.client_request_id``. A client retries without being billed
twice through ``Idempotency-Key`` (``billing.idempotency``): a replayed answer is returned
before this middleware runs.

A request with an ``Idempotency-Key`` hands its built event to ``IdempotencyMiddleware``
instead (``EVENT_SINK_ATTR``), which writes it together with the key's stored answer in one
round trip (``event_insert_guarded(..., first=...)``), under the same failure policy.

Round trips per metered request: 1 (``SAVEPOINT; INSERT ... ON CONFLICT (<the unique key>)
DO NOTHING; RELEASE SAVEPOINT`` sent as one query by
``billing.services.event_insert_guarded``). A request that writes nothing else (a GET)
also pays a WAL flush at its COMMIT, since its transaction now holds a write.
"""

import functools
import logging
import re
import threading

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed

from billing.services import event_build, event_insert_guarded
from core.middleware import elapsed_ms
from tenancy.context import request_organization

logger = logging.getLogger("billing.metering")

_failures = 0
_failures_lock = threading.Lock()

_REGEX_GROUP = re.compile(r"\(\?P<(\w+)>")
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


#: Request attribute: a list set by ``IdempotencyMiddleware`` on a keyed request; the usage
#: middleware then appends its built event there instead of inserting it.
EVENT_SINK_ATTR = "billing_event_sink"


def write_failures() -> int:
    """Number of ``api.request`` events this process failed to write since it started."""
    return _failures


def _count_failure() -> None:
    global _failures
    with _failures_lock:
        _failures += 1


def event_not_written(request, response) -> None:
    """The failure policy of the usage event of ``request``: count it
    (``write_failures``) and log it at ERROR with the current exception's traceback, both
    ids, the method, path and status. Call it from an ``except`` block; never raises."""
    _count_failure()
    logger.exception(
        "billing event not written for request %s (client id %s; %s %s -> %s)",
        getattr(request, "request_id", None),
        getattr(request, "client_request_id", None) or "-",
        request.method,
        request.path,
        response.status_code,
    )


@functools.lru_cache(maxsize=1024)
def route_template(route: str | None) -> str | None:
    """Normalise a resolver route to ``/api/v1/cases/{pk}/``; cached per route (a process
    has as many as its URL patterns), since every metered request asks.

    Django joins the patterns of nested ``include()``s into ``ResolverMatch.route``:
    path converters (``<uuid:pk>``) and DRF router regexes
    (``^cases/(?P<pk>[^/.]+)/$``) both become ``{name}``; anchors are dropped.
    """
    if route is None:
        return None
    out, i = [], 0
    while i < len(route):
        match = _REGEX_GROUP.match(route, i)
        if match:  # skip the whole (possibly nested) group
            depth, j = 0, i
            while j < len(route):
                if route[j] == "\\":
                    j += 2
                    continue
                if route[j] == "(":
                    depth += 1
                elif route[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append("{" + match.group(1) + "}")
            i = j + 1
            continue
        out.append(route[i])
        i += 1
    text = _CONVERTER.sub(r"{\1}", "".join(out)).replace("^", "").replace("$", "")
    text = text.replace("\\", "")
    return "/" + text.lstrip("/")


#: The smallest ``duration_ms`` recorded (1 microsecond, the precision it is rounded to).
MIN_DURATION_MS = 0.001


def duration_ms(request) -> float:
    """Milliseconds since ``RequestTimerMiddleware`` started timing ``request``, rounded
    to 3 decimals (microseconds), and positive by construction: at least
    ``MIN_DURATION_MS``. ``core.middleware.elapsed_ms`` is 0.0 for a request the
    timer never saw (a request built outside the middleware stack), and a very fast
    request could round to 0.0; a recorded duration of 0 would read as "not measured",
    so both become 0.001: a measured duration is never 0."""
    return max(round(elapsed_ms(request), 3), MIN_DURATION_MS)


def not_billed(view):
    """Mark ``view`` (a Django view function) as never billed: a request it answers is not
    a served route (e.g. the JSON 404 catch-all for unknown ``/api/`` paths). Returns a
    wrapper with ``billable = False``, which ``UsageMiddleware.is_billable`` reads from the
    request's ``resolver_match.func``."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        return view(*args, **kwargs)

    wrapper.billable = False
    return wrapper


def _status_is_unbilled(status_code: int, rules: list[str]) -> bool:
    for rule in rules:
        rule = rule.strip().lower()
        if rule.endswith("xx") and rule[:-2].isdigit():
            if status_code // 100 == int(rule[:-2]):
                return True
        elif rule.isdigit() and status_code == int(rule):
            return True
    return False


class UsageMiddleware:
    """Writes one ``api.request`` event for each billable request.

    Billable: the request has an organization; the request resolved to a real route (a
    URL pattern whose view is not marked ``not_billed``: an unknown path answered by the
    404 catch-all is not served, so not billed); the path starts with one of
    ``settings.BILLABLE_ROUTES``; it is not under ``BILLING_EXCLUDED_PATHS``,
    ``STATIC_URL`` or ``MEDIA_URL``; the status is not in ``BILLING_UNBILLED_STATUSES``
    (default 401, 403, 429, 5xx). The event: user, quantity 1 ``call`` priced by
    ``billing.pricing``, ``request_id`` = the server's id of the request
    (``request.request_id``, unique per physical request), dimensions ``endpoint``,
    ``route``, ``method``, ``status_code``, ``duration_ms`` (float, ms since
    ``RequestTimerMiddleware``'s start, measured now, at least 0.001: see
    ``duration_ms``) and, when the client sent a valid ``X-Request-ID``,
    ``client_request_id`` (its correlation id, never a billing key).

    Raises ``MiddlewareNotUsed`` at start-up when ``BILLING_METERING_ENABLED`` is false.
    """

    def __init__(self, get_response):
        if not getattr(settings, "BILLING_METERING_ENABLED", True):
            raise MiddlewareNotUsed("BILLING_METERING_ENABLED is false")
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if self.is_billable(request, response):
            self.record(request, response)
        return response

    @staticmethod
    def _excluded_prefixes() -> list[str]:
        prefixes = list(getattr(settings, "BILLING_EXCLUDED_PATHS", []))
        for url in (settings.STATIC_URL, settings.MEDIA_URL):
            if url and not url.startswith(("http://", "https://")):
                prefixes.append("/" + url.lstrip("/"))
        return [p for p in prefixes if p]

    def is_billable(self, request, response) -> bool:
        """Whether ``request`` (answered by ``response``) is metered; see the class doc."""
        if request_organization(request) is None:
            return False
        match = getattr(request, "resolver_match", None)
        if match is None or not getattr(match.func, "billable", True):
            return False
        path = request.path_info  # the routed path, never SCRIPT_NAME + it (core.paths)
        if not any(path.startswith(prefix) for prefix in settings.BILLABLE_ROUTES):
            return False
        if any(path.startswith(prefix) for prefix in self._excluded_prefixes()):
            return False
        rules = getattr(settings, "BILLING_UNBILLED_STATUSES", ["401", "403", "429", "5xx"])
        return not _status_is_unbilled(response.status_code, rules)

    def record(self, request, response) -> None:
        """Write the event in a savepoint (or hand it to ``IdempotencyMiddleware`` through
        ``EVENT_SINK_ATTR``); log and count a failure (``event_not_written``), never raise."""
        request_id = getattr(request, "request_id", None)
        client_request_id = getattr(request, "client_request_id", None)
        try:
            match = getattr(request, "resolver_match", None)
            dimensions = {
                "endpoint": request.path_info,
                "route": route_template(match.route if match else None),
                "method": request.method,
                "status_code": response.status_code,
                "duration_ms": duration_ms(request),
            }
            if client_request_id:
                dimensions["client_request_id"] = client_request_id
            event = event_build(
                organization=request_organization(request),
                event_name="api.request",
                event_type="api",
                user=request.user if getattr(request.user, "is_authenticated", False) else None,
                request_id=request_id,
                unit="call",
                dimensions=dimensions,
            )
            sink = getattr(request, EVENT_SINK_ATTR, None)
            if sink is not None:
                sink.append(event)
            else:
                event_insert_guarded(event)
        except Exception:  # noqa: BLE001 - see the failure policy in the module doc
            event_not_written(request, response)
