"""Fakes of outside services for the billing tests.

``FakeStripe`` behaves like Stripe's meter-event endpoint: it saves the answer of each
``Idempotency-Key`` (a 500 included) and replays it for the same key; it rejects a create
whose ``identifier`` it already holds, as Stripe does. It never hides a duplicate: every
request that Stripe would process as a new create is recorded in ``creates`` (duplicates
included), so the tests assert how many creates each identifier got.

Used behind ``responses`` (which patches the ``requests`` library that
``stripe.RequestsClient`` uses), so stripe-python's own client is exercised.
"""

import json
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qs

METER_URL = "https://api.stripe.com/v1/billing/meter_events"


@dataclass
class Fail:
    """A planned Stripe error answer. ``recorded``: Stripe wrote the meter event before
    failing (an ambiguous 500). ``saved``: stored under the Idempotency-Key and replayed
    (Stripe saves every answer of a request that started executing; not a 409 conflict
    or a 429 rate limit, which are refused before)."""

    status: int
    headers: dict = field(default_factory=dict)
    recorded: bool = False
    error_type: str = "api_error"

    @property
    def saved(self) -> bool:
        return self.status not in (409, 429)


@dataclass
class Lost:
    """The request never reached Stripe (e.g. a connect timeout): nothing processed or saved."""

    exc: Exception


class FakeStripe:
    """Stripe's ``POST /v1/billing/meter_events``.

    ``plan``: one action per call, in order (then success): ``None`` (success), an int or
    ``Fail`` (an error answer), an exception (Stripe received and recorded the event, then
    the answer was lost: a read timeout), or ``Lost`` (never received).

    ``requests``: every request as sent. ``creates``: every request processed as a new
    create (not an idempotent replay), with ``duplicate`` True when Stripe rejected it
    because it already held the identifier. ``counted()``: what Stripe's meter sums.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.creates: list[dict] = []
        self.saved: dict[str, tuple] = {}  # Idempotency-Key -> (form, answer)
        self.plan: list = []

    def __call__(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        key = request.headers.get("Idempotency-Key")
        self.requests.append(
            {
                "event_name": form["event_name"],
                "identifier": form["identifier"],
                "timestamp": int(form["timestamp"]),
                "customer": form["payload[stripe_customer_id]"],
                "value": form["payload[value]"],
                "idempotency_key": key,
            }
        )
        if key in self.saved:  # Stripe replays the saved answer, whatever it was
            saved_form, (status, headers, body) = self.saved[key]
            if saved_form != form:
                return self._error(400, "idempotency_error", "Keys for idempotent requests...")
            return (status, {**headers, "Idempotent-Replayed": "true"}, body)
        action = self.plan.pop(0) if self.plan else None
        if isinstance(action, Lost):
            raise action.exc
        if isinstance(action, int):
            action = Fail(action)
        answer, saved = self._process(form, action)
        if saved:
            self.saved[key] = (form, answer)
        if isinstance(action, Exception):
            raise action  # received and recorded; the answer never arrives
        return answer

    def _process(self, form, action):
        identifier = form["identifier"]
        if isinstance(action, Fail) and not action.recorded:
            message = f"planned {action.status}"
            return self._error(action.status, action.error_type, message, action.headers), (
                action.saved
            )
        duplicate = any(c["identifier"] == identifier and not c["duplicate"] for c in self.creates)
        self.creates.append(
            {"identifier": identifier, "value": form["payload[value]"], "duplicate": duplicate}
        )
        if duplicate:
            message = f"An event already exists with identifier {identifier}."
            headers = {"Stripe-Should-Retry": "false"}
            return self._error(400, "invalid_request_error", message, headers), True
        if isinstance(action, Fail):  # recorded, then failed
            return self._error(action.status, action.error_type, "after write", action.headers), (
                True
            )
        return (200, {}, json.dumps({"object": "billing.meter_event", **form})), True

    @staticmethod
    def _error(status, error_type, message, headers=None):
        body = json.dumps({"error": {"type": error_type, "message": message}})
        return (status, dict(headers or {}), body)

    def identifiers(self):
        return [r["identifier"] for r in self.requests]

    def keys(self):
        return [r["idempotency_key"] for r in self.requests]

    def created_identifiers(self):
        """Identifiers of every new create, duplicates included (no dedup here)."""
        return [c["identifier"] for c in self.creates]

    def counted(self) -> dict[str, Decimal]:
        """Stripe's meter: the value of each identifier it accepted."""
        counted: dict[str, Decimal] = {}
        for create in self.creates:
            if not create["duplicate"]:
                counted[create["identifier"]] = counted.get(
                    create["identifier"], Decimal(0)
                ) + Decimal(create["value"])
        return counted
