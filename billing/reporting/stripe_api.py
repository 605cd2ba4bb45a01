"""The Stripe API: the client that sends meter events, and what each failed request means.

A meter event is created by ``POST /v1/billing/meter_events``
(Stripe API reference, "Create a billing meter event") with an ``Idempotency-Key`` header
(Stripe API reference, "Idempotent requests"). What an error means
(``classify_stripe_error``; ``billing.reporting.send`` acts on it):

* Stripe saves the result of a key, a 500 included, and replays it for the same key (the
  comment on ``_should_retry`` in stripe-python's ``_http_client.py`` says so too). So
  after a network error or timeout the SAME key is sent again (Stripe may have received
  the request; the key replays its result), while after a definitive 5xx answer the next
  attempt uses a NEW key (``<identifier>-r<n>``, ``UsageAggregate.key_revision``,
  persisted).
* Stripe enforces the uniqueness of a meter event ``identifier`` "within a rolling period
  of at least 24 hours" (API reference, ``identifier``), answering a duplicate with a 400
  ("An event already exists with identifier ...", ``Stripe-Should-Retry: false``). The
  identifier names exactly one aggregate whose value never changes once sent, so that
  answer means Stripe already has this aggregate: it is acknowledged like a success.
* ``Stripe-Should-Retry: false`` is obeyed (no further attempt), as is the
  ``should_retry`` of a connection error; a 4xx other than 409 and 429 is final;
  ``IdempotencyError`` (a key reused with other parameters) is a bug and is logged at
  ERROR, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


def stripe_client():
    """A ``stripe.StripeClient`` for ``STRIPE_API_KEY`` over the ``requests`` HTTP client,
    with stripe-python's own retries off (``billing.reporting.send.aggregate_send``
    retries, counting attempts)."""
    import stripe

    return stripe.StripeClient(
        settings.STRIPE_API_KEY,
        http_client=stripe.RequestsClient(timeout=settings.STRIPE_TIMEOUT_SECONDS),
        max_network_retries=0,
    )


@dataclass(frozen=True)
class ErrorVerdict:
    """How ``billing.reporting.send.aggregate_send`` treats a ``stripe.StripeError``.

    ``delivered``: Stripe already has the event (duplicate identifier); ``retry``:
    another attempt may follow; ``new_key``: the next attempt needs a new
    ``Idempotency-Key`` (Stripe saved this answer under the current one).
    """

    delivered: bool
    retry: bool
    new_key: bool


def _header(exc, name: str) -> str | None:
    for key, value in (getattr(exc, "headers", None) or {}).items():
        if key.lower() == name.lower():
            return str(value).strip().lower()
    return None


def is_duplicate_identifier(exc) -> bool:
    """True for Stripe's answer to a meter event whose ``identifier`` it already has: a
    400 ``invalid_request_error`` "An event already exists with identifier ..." (code
    ``duplicate_meter_event`` where Stripe sets one)."""
    import stripe

    if not isinstance(exc, stripe.InvalidRequestError):
        return False
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return exc.code == "duplicate_meter_event" or "already exists with identifier" in message


def classify_stripe_error(exc) -> ErrorVerdict:
    """Decide what a failed meter-event request means (the rules: this module's doc).

    Rules, in order: a duplicate identifier is delivered; ``IdempotencyError`` is final
    (a bug); a 5xx needs a new key; ``Stripe-Should-Retry: true/false`` decides when
    present (Stripe docs, "Advanced error handling", and stripe-python's
    ``_should_retry``); a connection error follows its ``should_retry`` (timeouts and
    refused connections retry with the same key, TLS failures do not); 409 (a
    concurrent request with the same key) and 429 retry with the same key; any
    other 4xx is final.
    """
    import stripe

    if is_duplicate_identifier(exc):
        return ErrorVerdict(delivered=True, retry=False, new_key=False)
    if isinstance(exc, stripe.IdempotencyError):
        return ErrorVerdict(delivered=False, retry=False, new_key=False)
    status = getattr(exc, "http_status", None)
    new_key = status is not None and status >= 500
    advice = _header(exc, "Stripe-Should-Retry")
    if advice in ("true", "false"):
        retry = advice == "true"
    elif isinstance(exc, stripe.APIConnectionError):
        retry = bool(getattr(exc, "should_retry", True))
    else:
        retry = new_key or status in (409, 429) or isinstance(exc, stripe.RateLimitError)
    return ErrorVerdict(delivered=False, retry=retry, new_key=new_key)
