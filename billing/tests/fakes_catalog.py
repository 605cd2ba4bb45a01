"""``FakeStripeCatalog``: Stripe's meters, products and prices endpoints, behind ``responses``
(which patches the ``requests`` library that ``stripe.RequestsClient`` uses), so
stripe-python's own client is exercised. Every request is recorded as sent (method, path,
its flat form or query, ``Idempotency-Key``); creates are replayed for a repeated
Idempotency-Key, as Stripe does; ``transfer_lookup_key`` moves a lookup key.
"""

import json
import re
from urllib.parse import parse_qsl, urlparse

import responses

BASE = "https://api.stripe.com"


def nest(flat: dict) -> dict:
    """Stripe's form encoding (``a[b][0][c]=v``) back to nested dicts and lists."""
    root: dict = {}
    for key, value in flat.items():
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


class FakeStripeCatalog:
    """A Stripe account's catalog: ``meters``, ``products``, ``prices`` (lists of dicts as
    Stripe returns them); ``requests`` as sent; ``creates()`` of a kind."""

    def __init__(self):
        self.meters: list[dict] = []
        self.products: list[dict] = []
        self.prices: list[dict] = []
        self.requests: list[dict] = []
        self.saved: dict[str, tuple] = {}
        self._ids = 0

    def install(self, mock: responses.RequestsMock) -> None:
        for method in (responses.GET, responses.POST):
            mock.add_callback(method, re.compile(BASE + r"/v1/.*"), callback=self)

    def creates(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def __call__(self, request):
        url = urlparse(request.url)
        form = dict(parse_qsl(request.body or "", keep_blank_values=True))
        if request.method == "GET":
            form = dict(parse_qsl(url.query, keep_blank_values=True))
        key = request.headers.get("Idempotency-Key")
        self.requests.append(
            {"method": request.method, "path": url.path, "form": form, "idempotency_key": key}
        )
        if request.method == "POST" and key in self.saved:
            return self.saved[key]
        answer = self._answer(request.method, url.path, nest(form))
        if request.method == "POST":
            self.saved[key] = answer
        return answer

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self._ids:04d}"

    @staticmethod
    def _ok(body) -> tuple:
        return (200, {}, json.dumps(body))

    @staticmethod
    def _list(items) -> tuple:
        return (200, {}, json.dumps({"object": "list", "data": items, "has_more": False}))

    def _answer(self, method, path, params):
        if path == "/v1/billing/meters" and method == "GET":
            return self._list([m for m in self.meters if m["status"] == "active"])
        if path == "/v1/billing/meters":
            meter = {
                "id": self._new_id("mtr"),
                "object": "billing.meter",
                "status": "active",
                **params,
            }
            self.meters.append(meter)
            return self._ok(meter)
        if path == "/v1/products" and method == "GET":
            return self._list([p for p in self.products if p["active"]])
        if path == "/v1/products":
            product = {"id": self._new_id("prod"), "object": "product", "active": True, **params}
            self.products.append(product)
            return self._ok(product)
        if path == "/v1/prices" and method == "GET":
            keys = params.get("lookup_keys", [])
            return self._list([p for p in self.prices if p.get("lookup_key") in keys])
        if path == "/v1/prices":
            return self._ok(self.add_price(params))
        match = re.fullmatch(r"/v1/prices/([^/]+)", path)
        if match and method == "GET":
            for price in self.prices:
                if price["id"] == match.group(1):
                    return self._ok(price)
            error = {"type": "invalid_request_error", "message": "No such price"}
            return (404, {}, json.dumps({"error": error}))
        return (400, {}, json.dumps({"error": {"type": "invalid_request_error", "message": path}}))

    def add_price(self, params: dict) -> dict:
        """Store a price as Stripe shows it (tiers with integer or null ``up_to``)."""
        params = dict(params)
        if params.pop("transfer_lookup_key", None) == "true":
            for price in self.prices:
                if price.get("lookup_key") == params.get("lookup_key"):
                    price["lookup_key"] = None
        tiers = [
            {
                "up_to": None if t["up_to"] == "inf" else int(t["up_to"]),
                "unit_amount_decimal": t["unit_amount_decimal"],
                "unit_amount": None,
            }
            for t in params.pop("tiers", [])
        ]
        price = {
            "id": self._new_id("price"),
            "object": "price",
            "active": True,
            "tiers_mode": None,
            "unit_amount_decimal": None,
            **params,
            "tiers": tiers or None,
        }
        self.prices.append(price)
        return price
