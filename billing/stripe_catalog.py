"""What ``BILLING_PLANS`` looks like in Stripe: meters, products and metered prices.

Used by ``manage.py stripe_setup`` (create what is missing, idempotently) and
``manage.py check_stripe_config`` (compare, exit 1 on any difference). Objects, found again
by what we put on them:

* **Meter** per reported event name (``STRIPE_METERS``: ours -> Stripe's ``event_name``),
  found by its ``event_name`` (unique among a Stripe account's active meters): ``sum``
  aggregation, customer from ``payload[stripe_customer_id]``, value from ``payload[value]``
  (what ``billing.reporting.send`` sends; Stripe API reference, "Create a billing meter").
* **Product** per meter, found by ``metadata[goldleaves_meter]``.
* **Price** per plan and meter, found by its ``lookup_key`` ``goldleaves_<tier>_<meter>``
  (Stripe API reference, "Create a price", ``lookup_key``), monthly and metered on the
  meter (``recurring[usage_type]=metered``, ``recurring[meter]``). The plan's included
  units are a free first tier and its tiers follow, shifted by the included units (Stripe's
  ``up_to`` counts every unit of the period; ours count after the included ones), graduated
  (``tiers_mode=graduated``); a plan meter with nothing included and one tier is a
  ``per_unit`` price. Stripe's prices cannot change their amounts, so a price that differs
  from the plan is replaced by a new one that takes over its lookup key
  (``transfer_lookup_key``); the new id must then be configured.

Creates carry an ``Idempotency-Key`` derived from their parameters
(Stripe API reference, "Idempotent requests"), so a retried run never makes two.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from billing.plans import Plan, PlanMeter

META_METER = "goldleaves_meter"
META_PLAN = "goldleaves_plan"


def lookup_key(tier: str, meter: str) -> str:
    """The price's ``lookup_key``: ``goldleaves_<tier>_<meter with . as _>``."""
    return f"goldleaves_{tier}_{meter.replace('.', '_')}"


def idempotency_key(kind: str, params: dict) -> str:
    """``goldleaves-setup-<kind>-<sha256 of the parameters, 32 hex>``: the same create gets
    the same key (Stripe replays its first answer for 24 hours)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    return f"goldleaves-setup-{kind}-{digest}"


def meter_params(event_name: str, stripe_event_name: str) -> dict:
    """The ``POST /v1/billing/meters`` parameters of our meter ``event_name``."""
    return {
        "display_name": f"Goldleaves {event_name}",
        "event_name": stripe_event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    }


def product_params(event_name: str) -> dict:
    """The ``POST /v1/products`` parameters of the product of meter ``event_name``."""
    return {"name": f"Goldleaves {event_name}", "metadata": {META_METER: event_name}}


def _amount(value: Decimal) -> str:
    return format(value.normalize(), "f")


def stripe_tiers(plan_meter: PlanMeter) -> list[dict]:
    """Stripe's graduated tiers of a plan meter: ``[{"up_to": int | "inf",
    "unit_amount_decimal": str}]``, the included units first at ``"0"``."""
    included = plan_meter.price.included
    tiers = []
    if included > 0:
        tiers.append({"up_to": int(included), "unit_amount_decimal": "0"})
    for tier in plan_meter.price.tiers:
        up_to = "inf" if tier.up_to is None else int(included + tier.up_to)
        tiers.append({"up_to": up_to, "unit_amount_decimal": _amount(tier.unit_amount_decimal)})
    return tiers


def price_params(plan: Plan, plan_meter: PlanMeter, *, product: str, meter: str) -> dict:
    """The ``POST /v1/prices`` parameters of ``plan_meter`` on ``plan``, for the Stripe
    ``product`` and ``meter`` ids, in ``settings.BILLING_CURRENCY``."""
    params = {
        "currency": settings.BILLING_CURRENCY,
        "product": product,
        "lookup_key": lookup_key(plan.tier, plan_meter.name),
        "nickname": f"{plan.name} {plan_meter.name}",
        "metadata": {META_PLAN: plan.tier, META_METER: plan_meter.name},
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
    }
    tiers = stripe_tiers(plan_meter)
    if len(tiers) == 1:
        params.update(
            billing_scheme="per_unit", unit_amount_decimal=tiers[0]["unit_amount_decimal"]
        )
    else:
        params.update(billing_scheme="tiered", tiers_mode="graduated", tiers=tiers)
    return params


def field_of(obj, key, default=None):
    """``obj[key]`` of a Stripe object (or dict), ``default`` when absent or null
    (stripe-python's objects are not dicts: no ``.get``)."""
    try:
        value = obj[key]
    except (KeyError, TypeError, IndexError):
        return default
    return default if value is None else value


def _decimal(value) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def _price_tiers(price) -> list[tuple]:
    """A Stripe price's tiers as ``[(up_to or "inf", Decimal cents per unit)]``."""
    result = []
    for tier in field_of(price, "tiers", []) or []:
        unit = _decimal(field_of(tier, "unit_amount_decimal")) or Decimal(
            field_of(tier, "unit_amount", 0)
        )
        result.append((field_of(tier, "up_to", "inf"), unit))
    return result


def price_differences(price, wanted: dict) -> list[str]:
    """What differs between a Stripe ``price`` (fetched with ``expand[]=tiers``) and the
    ``wanted`` parameters (``price_params``): ``["currency is 'eur', not 'usd'", ...]``;
    ``[]`` when it prices exactly as the plan says."""
    problems = []
    if not field_of(price, "active", False):
        problems.append("is not active")
    recurring = field_of(price, "recurring", {})
    checks = [
        ("currency", field_of(price, "currency"), wanted["currency"]),
        ("recurring.interval", field_of(recurring, "interval"), "month"),
        ("recurring.usage_type", field_of(recurring, "usage_type"), "metered"),
        ("recurring.meter", field_of(recurring, "meter"), wanted["recurring"]["meter"]),
        ("billing_scheme", field_of(price, "billing_scheme"), wanted["billing_scheme"]),
    ]
    if wanted["billing_scheme"] == "tiered":
        want = [(t["up_to"], Decimal(t["unit_amount_decimal"])) for t in wanted["tiers"]]
        checks.append(("tiers_mode", field_of(price, "tiers_mode"), "graduated"))
        checks.append(("tiers", _price_tiers(price), want))
    else:
        have = _decimal(field_of(price, "unit_amount_decimal"))
        if have is None and field_of(price, "unit_amount") is not None:
            have = Decimal(field_of(price, "unit_amount"))
        checks.append(("unit_amount_decimal", have, Decimal(wanted["unit_amount_decimal"])))
    for name, have, want in checks:
        if have != want:
            problems.append(f"{name} is {_show(have)}, not {_show(want)}")
    return problems


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{up_to}: {_amount(unit)}" for up_to, unit in value) + "]"
    if isinstance(value, Decimal):
        return _amount(value)
    return repr(value)


@dataclass
class Catalog:
    """What Stripe has: active meters by Stripe ``event_name``, products by
    ``metadata[goldleaves_meter]`` and prices by ``lookup_key`` (each a Stripe object)."""

    meters: dict = field(default_factory=dict)
    products: dict = field(default_factory=dict)
    prices: dict = field(default_factory=dict)


def catalog_read(client, *, lookup_keys: list[str]) -> Catalog:
    """Read the account's active meters and products (every page) and the prices with
    ``lookup_keys`` (Stripe takes at most 10 per request; tiers expanded).

    Raises:
        stripe.StripeError: Stripe refused or did not answer.
    """
    catalog = Catalog()
    for meter in client.v1.billing.meters.list(
        params={"status": "active", "limit": 100}
    ).auto_paging_iter():
        catalog.meters.setdefault(meter["event_name"], meter)
    for product in client.v1.products.list(
        params={"active": True, "limit": 100}
    ).auto_paging_iter():
        name = field_of(field_of(product, "metadata", {}), META_METER)
        if name:
            catalog.products.setdefault(name, product)
    for start in range(0, len(lookup_keys), 10):
        params = {
            "lookup_keys": lookup_keys[start : start + 10],
            "expand": ["data.tiers"],
            "limit": 100,
        }
        for price in client.v1.prices.list(params=params).auto_paging_iter():
            catalog.prices[price["lookup_key"]] = price
    return catalog


def price_retrieve(client, price_id: str):
    """The Stripe price ``price_id`` with its tiers, or ``None`` if Stripe has no such price.

    Raises:
        stripe.StripeError: any error but "no such price" (404).
    """
    import stripe

    try:
        return client.v1.prices.retrieve(price_id, params={"expand": ["tiers"]})
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise
