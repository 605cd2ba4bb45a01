"""Stripe's customers, subscriptions and meters API, faked behind ``responses`` (which
patches the ``requests`` library under ``stripe.RequestsClient``), so stripe-python's own
client builds and sends every request. Every request is recorded with its method, path,
form body (decoded the way Stripe decodes it) and Idempotency-Key; an Idempotency-Key
seen before gets the first answer again, as Stripe does (Stripe API reference,
"Idempotent requests").

Also signs webhook deliveries with Stripe's scheme (Stripe docs, "Check the webhook
signatures"): ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import responses

API = "https://api.stripe.com"
WEBHOOK_SECRET = "whsec_goldleaves_test_secret"

#: Three plans, two meters each, with test price ids (the shape of ``BILLING_PLANS``).
PLANS = {
    tier: {
        "name": tier.title(),
        "rate_limit": {"api": 1000},
        "meters": {
            "api.request": {"stripe_price_id": f"price_{tier}_api", "included": "0", "tiers": []},
            "doc.upload": {"stripe_price_id": f"price_{tier}_doc", "included": "0", "tiers": []},
        },
    }
    for tier in ("starter", "pro", "enterprise")
}


def sign(
    payload: bytes | str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def event_body(event_id: str, event_type: str, obj: dict, *, created: int) -> bytes:
    """A snapshot event as Stripe posts it (Stripe API reference, "The Event object")."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "api_version": "2025-03-31.basil",
            "data": {"object": obj},
        }
    ).encode()


def subscription(
    sub_id: str, *, customer: str, status: str, tier: str, metadata: dict | None = None
) -> dict:
    """A subscription object whose items carry ``tier``'s prices of ``PLANS``."""
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "created": 1764547200,
        "metadata": metadata or {},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{sub_id}_{n}",
                    "object": "subscription_item",
                    "price": {"id": spec["stripe_price_id"], "object": "price"},
                    "current_period_start": 1764547200,  # 2025-12-01T00:00:00Z
                    "current_period_end": 1767225600,  # 2026-01-01T00:00:00Z
                }
                for n, spec in enumerate(PLANS[tier]["meters"].values())
            ],
        },
    }


def form(body) -> dict:
    """A form-encoded Stripe request body as ``{key: value}`` (``items[0][price]``...)."""
    if not body:
        return {}
    if isinstance(body, bytes):
        body = body.decode()
    return dict(parse_qsl(body, keep_blank_values=True))


@dataclass
class Call:
    method: str
    path: str
    params: dict
    idempotency_key: str | None


@dataclass
class FakeStripeApi:
    """Customers, subscriptions and meters. ``subscriptions`` holds the objects by id;
    ``meters`` ``{event_name: meter id}``; ``summaries`` ``{(meter id, customer): value}``;
    ``fail_next``: HTTP statuses to answer, in order, before behaving."""

    subscriptions: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    fail_next: list = field(default_factory=list)
    _saved: dict = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def install(self, mock: responses.RequestsMock) -> None:
        for method in (responses.GET, responses.POST):
            mock.add_callback(method, re.compile(rf"{API}/v1/.*"), callback=self)

    def __call__(self, request):
        url = urlsplit(request.url)
        params = form(request.body) if request.method == "POST" else dict(parse_qsl(url.query))
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        self.calls.append(Call(request.method, url.path, params, key))
        if key is not None and key in self._saved:
            status, body = self._saved[key]
            return status, {"Idempotent-Replayed": "true"}, body
        if self.fail_next:
            status = self.fail_next.pop(0)
            answer = (status, json.dumps({"error": {"type": "api_error", "message": "down"}}))
        else:
            answer = self._route(request.method, url.path, params)
        if key is not None:
            self._saved[key] = answer
        return answer[0], {}, answer[1]

    def _route(self, method, path, params):
        if (method, path) == ("POST", "/v1/customers"):
            return 200, json.dumps({"id": f"cus_fake{next(self._ids)}", "object": "customer"})
        if (method, path) == ("POST", "/v1/subscriptions"):
            sub_id = f"sub_fake{next(self._ids)}"
            prices = [
                v for k, v in sorted(params.items()) if re.fullmatch(r"items\[\d+\]\[price\]", k)
            ]
            obj = {
                "id": sub_id,
                "object": "subscription",
                "customer": params["customer"],
                "status": "active",
                "created": int(time.time()),
                "metadata": {},
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{sub_id}_{n}",
                            "object": "subscription_item",
                            "price": {"id": p},
                        }
                        for n, p in enumerate(prices)
                    ],
                },
            }
            self.subscriptions[sub_id] = obj
            return 200, json.dumps(obj)
        match = re.fullmatch(r"/v1/subscriptions/(\w+)", path)
        if match and match.group(1) in self.subscriptions:
            return 200, json.dumps(self.subscriptions[match.group(1)])
        if (method, path) == ("GET", "/v1/billing/meters"):
            data = [
                {"id": mid, "object": "billing.meter", "event_name": name, "status": "active"}
                for name, mid in self.meters.items()
            ]
            return 200, json.dumps(
                {"object": "list", "url": "/v1/billing/meters", "has_more": False, "data": data}
            )
        match = re.fullmatch(r"/v1/billing/meters/(\w+)/event_summaries", path)
        if match:
            value = self.summaries.get((match.group(1), params.get("customer")), 0)
            data = [
                {
                    "id": "mtrsum_1",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "meter": match.group(1),
                    "start_time": int(params["start_time"]),
                    "end_time": int(params["end_time"]),
                }
            ]
            return 200, json.dumps({"object": "list", "url": path, "has_more": False, "data": data})
        return 404, json.dumps({"error": {"type": "invalid_request_error", "message": path}})

    def posts(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == path]
