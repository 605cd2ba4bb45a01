"""The rating function: a usage quantity and a plan's meter price -> what it costs.

Pure (no database, no settings): ``rate(quantity, price)`` is the one computation behind
every amount the API shows for a plan meter (the usage summary and report, the upcoming
invoice), so they cannot disagree.

A meter's price (``MeterPrice``) is what ``BILLING_PLANS`` says for one meter of one plan
(``billing.plans``): ``included`` units per billing period that cost nothing, then
graduated tiers ``[(up_to, unit_amount_decimal), ...]`` over the units AFTER the included
ones. Graduated means each tier prices only the units that fall inside it, like Stripe's
``tiers_mode=graduated`` ("Prices" API reference, ``tiers_mode``) and Lago's graduated
charges; ``up_to`` is the cumulative bound of billable units (``None``: open-ended, the
last tier only); ``unit_amount_decimal`` is cents per unit as a ``Decimal`` (Stripe's
``unit_amount_decimal``: "a decimal value in cents ... with at most 12 decimal places").

Rounding, once: each tier's amount is exact (``quantity * unit_amount_decimal``, in
``Decimal``, no rounding); the meter's total is the exact sum rounded ONCE, half-up, to
integer cents (``ROUND_HALF_UP``, as ``billing.pricing.line_cost_cents``). So that the
tiers add up to the total to the cent, each tier's ``amount_cents`` is that total split
over the tiers by the largest-remainder method (each tier gets the floor of its exact
amount, and the cents the rounding added go one each to the tiers with the largest
fractional parts, the earlier tier first on a tie); a tier whose exact amount is
whole, e.g. a free one, never receives one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext

ZERO = Decimal(0)
#: Significant digits of the arithmetic: a quantity (12 digits) times a unit amount (up to
#: 10 integer digits and 12 decimal places) is exact with room to spare.
PRECISION = 60


@dataclass(frozen=True)
class Tier:
    """One graduated tier: billable units up to ``up_to`` (cumulative, counted after the
    included units; ``None`` = no upper bound) cost ``unit_amount_decimal`` cents each."""

    up_to: Decimal | None
    unit_amount_decimal: Decimal


@dataclass(frozen=True)
class MeterPrice:
    """A plan's price of one meter: ``included`` free units per billing period, then
    ``tiers`` (ascending ``up_to``, the last one ``None``). Validated by
    ``billing.plans.plan_problems``; ``rate`` assumes a valid price."""

    included: Decimal
    tiers: tuple[Tier, ...]


@dataclass(frozen=True)
class TierCharge:
    """What one tier charges: ``quantity`` units (``Decimal``) in ``(start, up_to]``
    of billable units, ``amount_decimal`` exact cents, ``amount_cents`` its share of
    the rounded total (integer cents)."""

    start: Decimal
    up_to: Decimal | None
    unit_amount_decimal: Decimal
    quantity: Decimal
    amount_decimal: Decimal
    amount_cents: int


@dataclass(frozen=True)
class Rating:
    """The rating of ``quantity`` units: ``included`` of them free (at most the meter's
    included units), ``billable`` priced by ``tiers`` (one ``TierCharge`` per configured
    tier, zero quantities included), ``amount_decimal`` the exact sum in cents and
    ``total_cents`` that sum rounded once, half-up. ``billable == sum(tier quantities)``
    and ``total_cents == sum(tier amount_cents)``."""

    quantity: Decimal
    included: Decimal
    billable: Decimal
    tiers: tuple[TierCharge, ...]
    amount_decimal: Decimal
    total_cents: int


def round_cents(exact: Decimal) -> int:
    """``exact`` cents (``Decimal``) rounded half-up to integer cents: ``2.5 -> 3``."""
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _largest_remainder(total: int, exact: list[Decimal]) -> list[int]:
    """``total`` cents split over ``exact`` amounts by the largest remainder (see the module
    doc). When ``total`` is ``round_cents(sum(exact))`` it is at least the sum of the floors
    and exceeds it by at most the number of amounts with a fractional part."""
    floors = [int(value.to_integral_value(rounding=ROUND_FLOOR)) for value in exact]
    left = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def rate(quantity, price: MeterPrice) -> Rating:
    """Rate ``quantity`` units of one billing period (``Decimal``, ``int`` or decimal string;
    negative counts as 0) with ``price``.

    Returns:
        the ``Rating`` (included, billable, per-tier quantities and amounts, total cents).
    Raises:
        decimal.InvalidOperation: ``quantity`` is not a number.
    """
    with localcontext(prec=PRECISION):
        return _rate(max(Decimal(quantity), ZERO), price)


def _rate(quantity: Decimal, price: MeterPrice) -> Rating:
    included = min(quantity, price.included)
    billable = quantity - included
    charges: list[tuple[Decimal, Decimal | None, Decimal, Decimal, Decimal]] = []
    start = ZERO
    for tier in price.tiers:
        end = billable if tier.up_to is None else min(billable, tier.up_to)
        units = max(end - start, ZERO)
        charges.append(
            (start, tier.up_to, tier.unit_amount_decimal, units, units * tier.unit_amount_decimal)
        )
        if tier.up_to is None:
            break
        start = max(start, tier.up_to)
    exact = sum((charge[4] for charge in charges), ZERO)
    total = round_cents(exact)
    cents = _largest_remainder(total, [charge[4] for charge in charges])
    return Rating(
        quantity=quantity,
        included=included,
        billable=billable,
        tiers=tuple(
            TierCharge(
                start=start,
                up_to=up_to,
                unit_amount_decimal=unit,
                quantity=units,
                amount_decimal=amount,
                amount_cents=share,
            )
            for (start, up_to, unit, units, amount), share in zip(charges, cents, strict=True)
        ),
        amount_decimal=exact,
        total_cents=total,
    )


def allocate(total: int, weights: list[Decimal]) -> list[int]:
    """Split ``total`` integer cents over rows in proportion to ``weights`` (quantities,
    >= 0) by the largest-remainder method, the earlier row first on a tie: the shares are
    integers >= 0 that add up to ``total`` exactly. All weights 0: everything to the first
    row (``[]`` for no rows). Used by the usage report to show a meter's rated amount per
    day, route or user without rating it a second time."""
    if not weights:
        return []
    whole = sum(weights, ZERO)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    with localcontext(prec=PRECISION):
        return _largest_remainder(total, [Decimal(total) * weight / whole for weight in weights])
