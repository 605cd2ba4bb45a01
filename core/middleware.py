"""Project-wide middleware: request id and request timer.

Both are tiny and run first, so that every later layer (tenant, usage, views,
log lines) can rely on ``request.request_id`` (the server's id of the request),
``request.client_request_id`` (the client's correlation id, or ``None``) and
``request.start_time``.

Log lines carry both ids through ``RequestIdLogFilter``, which
``goldleaves/settings.py`` attaches to EVERY handler of ``settings.LOGGING``: each record
that reaches a configured handler, from any logger (ours or a library's), has
``record.request_id`` before it is formatted. A filter, not a log record factory: a
factory that always sets the attribute makes any ``extra={"request_id": ...}`` raise
``KeyError`` in ``Logger.makeRecord`` ("Attempt to overwrite 'request_id' in
LogRecord"); the filter sets it only when the record lacks it.
"""

import contextvars
import logging
import re
import time

from uuid_utils.compat import uuid7

REQUEST_ID_HEADER = "X-Request-ID"
#: The response header that always carries the server's own id of the request.
SERVER_REQUEST_ID_HEADER = "X-Server-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: The current request's server-minted id, for log records; ``"-"`` outside a request.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
#: The client's ``X-Request-ID`` (correlation id) of the current request; ``"-"`` when it
#: sent none (or an invalid one) and outside a request.
client_request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "client_request_id", default="-"
)


def new_request_id() -> str:
    """A new server request id: a UUIDv7 string (RFC 9562, section 5.7: random, but led by
    a millisecond Unix timestamp).

    It is the billing key of the request (the ``request_id`` of its ``api.request``
    event), and v7 rather than v4 because the unique index on (organization, event name,
    request id) then takes new keys at its right edge instead of on a random page of a
    table that holds millions of events. Measured on 10M events (bench/request_overhead.py's
    table): a random key cost a full-page image in the WAL on about one insert in one or
    two after each checkpoint (8 KiB more to flush at COMMIT) and a buffer miss; a
    time-ordered one almost never."""
    return str(uuid7())


def valid_client_request_id(value: str | None) -> str | None:
    """``value`` if it is a valid correlation id (1-128 characters of ``[A-Za-z0-9._:-]``),
    else ``None``. A malformed header (empty, too long, spaces, control characters) is
    ignored, never an error."""
    if value and _REQUEST_ID_RE.match(value):
        return value
    return None


def clean_request_id(value: str | None) -> str:
    """The id echoed in ``X-Request-ID``: ``value`` if it is a valid client id
    (``valid_client_request_id``), else a new server id (``new_request_id``)."""
    return valid_client_request_id(value) or new_request_id()


class RequestIdMiddleware:
    """Gives every physical request a server-minted id and keeps the client's id apart.

    * ``request.request_id``: a new UUIDv7 (``new_request_id``) for EVERY request, whatever
      the client sent. It is the billing key (the ``api.request`` event's ``request_id``,
      unique per organization) and is always echoed in ``X-Server-Request-ID``.
    * ``request.client_request_id``: the client's ``X-Request-ID`` if valid
      (``valid_client_request_id``), else ``None``: a correlation id only, echoed in
      ``X-Request-ID`` (or the server id when the client sent none), on log lines and in
      the event's ``dimensions.client_request_id``; never a reason to skip a charge.

    Both are exposed to log records while the request runs (``request_id_var``,
    ``client_request_id_var``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = new_request_id()
        request.client_request_id = valid_client_request_id(request.headers.get(REQUEST_ID_HEADER))
        token = request_id_var.set(request.request_id)
        client_token = client_request_id_var.set(request.client_request_id or "-")
        try:
            response = self.get_response(request)
        finally:
            client_request_id_var.reset(client_token)
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.client_request_id or request.request_id
        response[SERVER_REQUEST_ID_HEADER] = request.request_id
        return response


class RequestTimerMiddleware:
    """Records ``request.start_time`` (``time.perf_counter()`` seconds) and adds
    ``Server-Timing: app;dur=<ms>`` (W3C Server Timing) to the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.start_time = time.perf_counter()
        response = self.get_response(request)
        duration_ms = (time.perf_counter() - request.start_time) * 1000.0
        response["Server-Timing"] = f"app;dur={duration_ms:.2f}"
        return response


def elapsed_ms(request) -> float:
    """Milliseconds since ``RequestTimerMiddleware`` saw ``request`` (0.0 if it did not)."""
    start = getattr(request, "start_time", None)
    if start is None:
        return 0.0
    return (time.perf_counter() - start) * 1000.0


class RequestIdLogFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's server id from ``request_id_var``,
    or ``-`` outside a request) and ``record.client_request_id`` (the client's
    ``X-Request-ID``, from ``client_request_id_var``, or ``-``) to a record that lacks them;
    a record given one in its log call's ``extra`` keeps that value. Never drops a record
    (returns ``True``).

    On every handler of ``settings.LOGGING`` (added in ``goldleaves/settings.py``), as a
    handler filter: logger filters run only for records logged on that very logger, not
    for records propagated from its children (Python docs, "Filter Objects")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "client_request_id"):
            record.client_request_id = client_request_id_var.get()
        return True
