"""``billing.rating.rate``: properties (hypothesis, bounded) and the hand-computed table of
the README's "Plans and pricing" example."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.rating import MeterPrice, Tier, allocate, rate

D = Decimal

#: The README example: 1,000 requests included, then 0.5 cents up to 10,000 billable
#: requests, then 0.25 cents.
EXAMPLE = MeterPrice(
    included=D(1000),
    tiers=(Tier(up_to=D(10000), unit_amount_decimal=D("0.5")), Tier(None, D("0.25"))),
)

#: quantity -> (included, billable, tier quantities, tier cents, total cents), by hand:
#: 11,001 = 1,000 free + 10,000 x 0.5 (5,000 c) + 1 x 0.25 (0.25 c) = 5,000.25 -> 5,000.
HAND_TABLE = [
    ("0", "0", "0", ("0", "0"), (0, 0), 0),
    ("999", "999", "0", ("0", "0"), (0, 0), 0),
    ("1000", "1000", "0", ("0", "0"), (0, 0), 0),
    ("1001", "1000", "1", ("1", "0"), (1, 0), 1),  # 0.5 c rounds half-up to 1
    ("1003", "1000", "3", ("3", "0"), (2, 0), 2),  # 1.5 c -> 2
    ("5000", "1000", "4000", ("4000", "0"), (2000, 0), 2000),
    ("11000", "1000", "10000", ("10000", "0"), (5000, 0), 5000),
    ("11001", "1000", "10001", ("10000", "1"), (5000, 0), 5000),  # 5,000.25 -> 5,000
    ("11002", "1000", "10002", ("10000", "2"), (5000, 1), 5001),  # 5,000.5 -> 5,001
    ("21000", "1000", "20000", ("10000", "10000"), (5000, 2500), 7500),
    ("1000.5", "1000", "0.5", ("0.5", "0"), (0, 0), 0),  # 0.25 c -> 0
]


@pytest.mark.parametrize("quantity, included, billable, units, cents, total", HAND_TABLE)
def test_hand_computed_table(quantity, included, billable, units, cents, total):
    rating = rate(quantity, EXAMPLE)
    assert rating.included == D(included)
    assert rating.billable == D(billable)
    assert tuple(t.quantity for t in rating.tiers) == tuple(D(u) for u in units)
    assert tuple(t.amount_cents for t in rating.tiers) == cents
    assert rating.total_cents == total


def test_tier_bounds_count_billable_units_after_the_included_ones():
    tiers = rate("21000", EXAMPLE).tiers
    assert [(t.start, t.up_to) for t in tiers] == [(D(0), D(10000)), (D(10000), None)]
    assert tiers[1].amount_decimal == D("2500.00")


def test_negative_quantity_counts_as_zero():
    assert rate("-5", EXAMPLE).total_cents == 0
    assert rate("-5", EXAMPLE).quantity == 0


def test_a_flat_price_is_the_old_quantity_times_unit_cost():
    flat = MeterPrice(included=D(0), tiers=(Tier(None, D(3)),))
    assert rate("7.5", flat).total_cents == 23  # 22.5 -> 23, as line_cost_cents


# --- properties ----------------------------------------------------------------------
quantities = st.decimals(
    min_value=0, max_value=D("99999999.9999"), places=4, allow_nan=False, allow_infinity=False
)
unit_amounts = st.decimals(
    min_value=0, max_value=D("1000"), places=6, allow_nan=False, allow_infinity=False
)


@st.composite
def meter_prices(draw):
    """1-4 tiers with ascending whole bounds, the last open; 0-100,000 included units."""
    bounds = sorted(
        draw(st.sets(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=3))
    )
    units = draw(st.lists(unit_amounts, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    tiers = tuple(Tier(D(b), u) for b, u in zip(bounds, units, strict=False)) + (
        Tier(None, units[-1]),
    )
    return MeterPrice(included=D(draw(st.integers(min_value=0, max_value=10**5))), tiers=tiers)


BOUNDED = settings(max_examples=200, deadline=None, database=None)


@BOUNDED
@given(quantity=quantities, price=meter_prices())
def test_never_negative_and_tiers_add_up(quantity, price):
    rating = rate(quantity, price)
    assert rating.total_cents >= 0
    assert all(t.amount_cents >= 0 and t.quantity >= 0 for t in rating.tiers)
    assert sum(t.amount_cents for t in rating.tiers) == rating.total_cents
    assert sum(t.quantity for t in rating.tiers) == rating.billable
    assert sum(t.amount_decimal for t in rating.tiers) == rating.amount_decimal
    assert rating.included + rating.billable == quantity
    # the one rounding: the exact sum, half-up, and each tier within a cent of its exact
    assert abs(rating.amount_decimal - rating.total_cents) <= D("0.5")
    assert all(abs(t.amount_decimal - t.amount_cents) < 1 for t in rating.tiers)


@BOUNDED
@given(a=quantities, b=quantities, price=meter_prices())
def test_monotone_in_quantity(a, b, price):
    low, high = sorted((a, b))
    assert rate(low, price).total_cents <= rate(high, price).total_cents
    assert rate(low, price).amount_decimal <= rate(high, price).amount_decimal


@BOUNDED
@given(price=meter_prices(), data=st.data())
def test_included_units_are_free(price, data):
    quantity = data.draw(
        st.decimals(min_value=0, max_value=price.included, places=4, allow_nan=False)
    )
    rating = rate(quantity, price)
    assert rating.total_cents == 0 and rating.billable == 0
    assert rating.included == quantity
    # and usage beyond them costs what the billable part alone costs with nothing included
    extra = data.draw(quantities)
    without = MeterPrice(included=D(0), tiers=price.tiers)
    assert rate(price.included + extra, price).total_cents == rate(extra, without).total_cents


@BOUNDED
@given(quantities=st.lists(quantities, min_size=1, max_size=20), cents=st.integers(0, 1000))
def test_a_flat_price_rates_a_line_as_the_sum_of_its_events(quantities, cents):
    """The default plans (one open tier at the old price, nothing included) give the
    old line cost: round_half_up(sum(quantity * unit_cost_cents)) over the events."""
    flat = MeterPrice(included=D(0), tiers=(Tier(None, D(cents)),))
    old = sum(q * cents for q in quantities)
    assert rate(sum(quantities), flat).total_cents == int(
        old.quantize(D(1), rounding="ROUND_HALF_UP")
    )


@BOUNDED
@given(weights=st.lists(quantities, min_size=1, max_size=10), total=st.integers(0, 10**9))
def test_allocate_adds_up_and_is_proportional_within_a_cent(weights, total):
    shares = allocate(total, weights)
    assert sum(shares) == total and all(share >= 0 for share in shares)
    whole = sum(weights)
    if whole:
        assert all(abs(s - D(total) * w / whole) < 1 for s, w in zip(shares, weights, strict=True))


def test_allocate_edges():
    assert allocate(5, []) == []
    assert allocate(5, [D(0), D(0)]) == [5, 0]
    assert allocate(1, [D(1), D(1)]) == [1, 0]  # a tie: the earlier row
