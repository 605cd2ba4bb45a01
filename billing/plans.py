"""Plans: ``settings.BILLING_PLANS``, read, validated and looked up.

``BILLING_PLANS`` is a JSON object keyed by plan tier (``tenancy.models.PlanTier``:
``starter``, ``pro``, ``enterprise``)::

    {"starter": {
        "name": "Starter",
        "rate_limit": {"api": 60},
        "meters": {
          "api.request": {"stripe_price_id": "price_...", "included": "1000",
                          "tiers": [{"up_to": "10000", "unit_amount_decimal": "0.5"},
                                    {"up_to": null, "unit_amount_decimal": "0.25"}]},
          "doc.upload": {...}, "doc.processed": {...}}},
     "pro": {...}, "enterprise": {...}}

* ``rate_limit``: requests per minute per scope (``tenancy.ratelimit`` reads it); a scope
  that is not listed is unlimited.
* ``meters``: one entry per billing event name; ``api.request``, ``doc.upload`` and
  ``doc.processed`` are required. ``included``: free units per billing period;
  ``tiers``: graduated tiers over the units AFTER the included ones, ``up_to`` the
  cumulative bound of billable units (``null`` only, and always, for the last tier);
  both are whole numbers as decimal strings, because Stripe's ``tiers[].up_to`` is an
  integer ("Prices" API reference), so a bound that Stripe cannot hold is refused.
  ``unit_amount_decimal``: cents per unit, a decimal string of at most 12 decimal places
  (Stripe's ``unit_amount_decimal``). ``stripe_price_id``: the Stripe price of that
  meter on that plan (``manage.py stripe_setup`` prints them), or ``""``.

The default (``goldleaves/settings.py``) is built from the settings it replaces: each tier's
``rate_limit`` from ``TIER_RATE_LIMITS`` and each meter's price as ``included "0"`` and one
open tier at ``BILLING_PRICE_BOOK[meter]`` (else ``USAGE_RATE_CENTS``) cents per unit,
which rates every quantity exactly as the old ``quantity * unit_cost_cents`` did
(``docs/architecture.md``, "Plans and rating").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings

from billing.rating import MeterPrice, Tier

#: The plan tiers (the values of ``tenancy.models.PlanTier``; a system check compares them).
TIERS = ("starter", "pro", "enterprise")
#: The meters every plan prices (the billing event names the API writes).
METERS = ("api.request", "doc.upload", "doc.processed")
#: Stripe's limit on the decimal places of ``unit_amount_decimal`` ("Prices" API reference).
MAX_UNIT_DECIMAL_PLACES = 12
#: ``BillingEvent.quantity`` is ``numeric(12, 4)``: a bound above this can never be reached.
MAX_QUANTITY = Decimal("99999999.9999")


class UnknownPlan(KeyError):
    """No plan is configured for this tier (``BILLING_PLANS`` has no such key)."""


@dataclass(frozen=True)
class PlanMeter:
    """One meter of a plan: the billing event ``name``, its ``stripe_price_id`` (``""``
    when Stripe is not configured) and its ``price`` for ``billing.rating.rate``."""

    name: str
    stripe_price_id: str
    price: MeterPrice


@dataclass(frozen=True)
class Plan:
    """A plan: its ``tier`` key, display ``name``, ``rate_limit`` (``{scope: requests per
    minute}``) and ``meters`` (``{event name: PlanMeter}``)."""

    tier: str
    name: str
    rate_limit: dict[str, int]
    meters: dict[str, PlanMeter]


def _decimal(value, path: str, problems: list, *, whole: bool) -> Decimal | None:
    if not isinstance(value, str):
        problems.append((path, f"must be a decimal string, not {type(value).__name__} {value!r}"))
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        problems.append((path, f"must be a decimal string, not {value!r}"))
        return None
    if not number.is_finite() or number < 0:
        problems.append((path, f"must be a finite number >= 0, not {value!r}"))
        return None
    if whole and number != number.to_integral_value():
        problems.append((path, f"must be a whole number of units (Stripe's up_to), not {value!r}"))
        return None
    if whole and number > MAX_QUANTITY:
        problems.append((path, f"must be at most {MAX_QUANTITY}, not {value!r}"))
        return None
    if not whole and -number.as_tuple().exponent > MAX_UNIT_DECIMAL_PLACES:
        problems.append((path, f"must have at most {MAX_UNIT_DECIMAL_PLACES} decimal places"))
        return None
    return number


def _tiers(raw, path: str, problems: list) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append((path, "must be a non-empty list of {up_to, unit_amount_decimal}"))
        return ()
    tiers, previous = [], Decimal(0)
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        if not isinstance(item, dict) or set(item) != {"up_to", "unit_amount_decimal"}:
            problems.append((where, "must be an object with exactly up_to, unit_amount_decimal"))
            continue
        last = index == len(raw) - 1
        up_to = None
        if item["up_to"] is None:
            if not last:
                problems.append((f"{where}.up_to", "may be null only in the last tier"))
        elif last:
            problems.append((f"{where}.up_to", "must be null in the last tier (open-ended)"))
        else:
            up_to = _decimal(item["up_to"], f"{where}.up_to", problems, whole=True)
            if up_to is not None and up_to <= previous:
                problems.append((f"{where}.up_to", f"must be greater than {previous}"))
            previous = up_to if up_to is not None else previous
        unit = _decimal(
            item["unit_amount_decimal"], f"{where}.unit_amount_decimal", problems, whole=False
        )
        tiers.append(Tier(up_to=up_to, unit_amount_decimal=unit or Decimal(0)))
    return tuple(tiers)


def _meter(name: str, raw, path: str, problems: list) -> PlanMeter | None:
    if not isinstance(raw, dict):
        problems.append((path, "must be an object {stripe_price_id, included, tiers}"))
        return None
    unknown = set(raw) - {"stripe_price_id", "included", "tiers"}
    if unknown:
        problems.append((path, f"has unknown keys {sorted(unknown)}"))
    price_id = raw.get("stripe_price_id", "")
    if not isinstance(price_id, str) or (price_id and not price_id.startswith("price_")):
        problems.append(
            (f"{path}.stripe_price_id", f'must be "" or a Stripe price id, not {price_id!r}')
        )
        price_id = ""
    included = _decimal(raw.get("included"), f"{path}.included", problems, whole=True)
    tiers = _tiers(raw.get("tiers"), f"{path}.tiers", problems)
    return PlanMeter(
        name=name,
        stripe_price_id=price_id,
        price=MeterPrice(included=included or Decimal(0), tiers=tiers),
    )


def _rate_limit(raw, path: str, problems: list) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append((path, "must be an object {scope: requests per minute}"))
        return {}
    limits = {}
    for scope, limit in raw.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            problems.append((f"{path}.{scope}", f"must be a whole number >= 1, not {limit!r}"))
            continue
        limits[scope] = limit
    return limits


def parse_plans(raw) -> tuple[dict[str, Plan], list[tuple[str, str]]]:
    """Read a ``BILLING_PLANS`` value (the decoded JSON). Pure.

    Returns:
        ``(plans, problems)``: ``{tier: Plan}`` of what could be read, and every problem as
        ``(path, message)`` (e.g. ``("pro.meters.api.request.tiers[1].up_to", "must be
        null in the last tier")``); the configuration is valid when ``problems`` is empty.
    """
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        return {}, [("", f"must be a JSON object keyed by plan tier, not {type(raw).__name__}")]
    for tier in TIERS:
        if tier not in raw:
            problems.append((tier, "is missing: every plan tier needs a plan"))
    plans = {}
    for tier, body in raw.items():
        if tier not in TIERS:
            problems.append((str(tier), f"is not a plan tier ({', '.join(TIERS)})"))
            continue
        if not isinstance(body, dict):
            problems.append((tier, "must be an object {name, rate_limit, meters}"))
            continue
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append((f"{tier}.name", "must be a non-empty string"))
            name = tier
        rate_limit = _rate_limit(body.get("rate_limit"), f"{tier}.rate_limit", problems)
        meters_raw = body.get("meters")
        if not isinstance(meters_raw, dict):
            problems.append((f"{tier}.meters", "must be an object {event name: meter}"))
            meters_raw = {}
        for meter in METERS:
            if meter not in meters_raw:
                problems.append((f"{tier}.meters.{meter}", "is missing"))
        meters = {}
        for meter, meter_raw in meters_raw.items():
            if not isinstance(meter, str) or not 1 <= len(meter) <= 64:
                problems.append(
                    (f"{tier}.meters", f"key {meter!r} must be an event name of 1-64 characters")
                )
                continue
            parsed = _meter(meter, meter_raw, f"{tier}.meters.{meter}", problems)
            if parsed is not None:
                meters[meter] = parsed
        plans[tier] = Plan(tier=tier, name=name, rate_limit=rate_limit, meters=meters)
    return plans, problems


def configured_plans() -> dict[str, Plan]:
    """``settings.BILLING_PLANS`` read by ``parse_plans`` (what could be read: the system
    check ``billing.E005`` stops a start-up with problems)."""
    return parse_plans(getattr(settings, "BILLING_PLANS", None))[0]


def plan_for_tier(tier: str) -> Plan:
    """The plan of ``tier`` (``Organization.plan_tier``).

    Raises:
        UnknownPlan: ``BILLING_PLANS`` has no plan for ``tier``.
    """
    plans = configured_plans()
    if tier not in plans:
        raise UnknownPlan(tier)
    return plans[tier]


def plan_price_ids(tier: str) -> dict[str, str]:
    """``{meter: stripe price id}`` of the plan of ``tier``; meters without one (``""``) are
    left out. Raises ``UnknownPlan`` like ``plan_for_tier``."""
    return {
        name: meter.stripe_price_id
        for name, meter in plan_for_tier(tier).meters.items()
        if meter.stripe_price_id
    }


def tier_for_price_ids(price_ids: Iterable[str]) -> str | None:
    """The tier whose configured Stripe price ids include every one of ``price_ids`` (e.g.
    the prices of a subscription's items), or ``None`` when no plan has them all, or none
    was given. Price ids are unique across plans (system check ``billing.E007``)."""
    wanted = {price_id for price_id in price_ids if price_id}
    if not wanted:
        return None
    for tier, plan in configured_plans().items():
        if wanted <= {meter.stripe_price_id for meter in plan.meters.values()}:
            return tier
    return None


def duplicate_price_ids(plans: dict[str, Plan]) -> dict[str, list[str]]:
    """``{price id: ["tier.meter", ...]}`` of the Stripe price ids configured more than once."""
    seen: dict[str, list[str]] = {}
    for tier, plan in plans.items():
        for name, meter in plan.meters.items():
            if meter.stripe_price_id:
                seen.setdefault(meter.stripe_price_id, []).append(f"{tier}.{name}")
    return {price_id: where for price_id, where in seen.items() if len(where) > 1}
