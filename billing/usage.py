"""Reads of usage and what it costs: the usage summary and report, and the upcoming invoice.

Every amount of a plan meter comes from ONE computation, ``billing.rating.rate`` over the
period's quantity of that meter with the organization's plan (``billing.plans``):

* ``usage_summary``: one line per event name; a plan meter's ``cost_cents`` is the rating's
  ``total_cents``.
* ``usage_report``: rows per day, route or user; a row's ``cost_cents`` is its share of its
  event name's summary amount (``billing.rating.allocate``, in proportion to quantity, the
  largest remainder), so the rows of an event name add up to the summary line exactly.
* ``upcoming_invoice``: per plan meter the rating itself (used, included, billable, tiers).

An event name that no plan meter prices keeps the price fixed on each event when it was
written: ``sum(quantity * unit_cost_cents)`` summed exactly by PostgreSQL and rounded once,
half-up (``billing.pricing.line_cost_cents``); report rows share it in proportion to their
exact cost. Why a plan meter's amount is the same to the cent as before for events written
under the default plans: ``docs/architecture.md``, "Plans and rating".

Periods are half-open ``[start, end)`` of aware datetimes (UTC); each read is ONE query
over the ``(organization_id, created_at)`` index ``billing_ev_org_created_idx`` (asserted by
``billing/tests/test_apis.py::test_summary_and_report_use_the_organization_created_at_index``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Count, DecimalField, ExpressionWrapper, F, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import TruncDate

from billing.models import BillingEvent
from billing.plans import Plan, UnknownPlan, plan_for_tier
from billing.pricing import line_cost_cents
from billing.rating import Rating, allocate, rate
from billing.selectors import billing_zone, month_period

GROUP_BY_CHOICES = ("day", "route", "user")
PLAN, EVENT_PRICE = "plan", "event_price"

_LINE_COST = ExpressionWrapper(
    F("quantity") * F("unit_cost_cents"),
    output_field=DecimalField(max_digits=24, decimal_places=4),
)
_TOTALS = {"count": Count("id"), "total_quantity": Sum("quantity"), "exact_cost": Sum(_LINE_COST)}


def organization_plan(organization) -> Plan | None:
    """The plan of ``organization.plan_tier``, or ``None`` when ``BILLING_PLANS`` has none
    (the system check ``billing.E005`` refuses that at start-up)."""
    try:
        return plan_for_tier(organization.plan_tier)
    except UnknownPlan:
        return None


def _period_events(organization, start: datetime, end: datetime) -> QuerySet[BillingEvent]:
    return BillingEvent.objects.filter(
        organization_id=organization.pk, created_at__gte=start, created_at__lt=end
    )


def _priced_line(event_name: str, quantity, exact_cost, plan: Plan | None) -> dict:
    """``{"quantity", "included", "billable", "cost_cents", "pricing", "rating"}`` of one
    event name's period total: rated by the plan meter, else the stored prices."""
    quantity = Decimal(quantity or 0)
    meter = plan.meters.get(event_name) if plan else None
    if meter is not None:
        rating = rate(quantity, meter.price)
        return {
            "quantity": quantity,
            "included": rating.included,
            "billable": rating.billable,
            "cost_cents": rating.total_cents,
            "pricing": PLAN,
            "rating": rating,
        }
    return {
        "quantity": quantity,
        "included": Decimal(0),
        "billable": quantity,
        "cost_cents": line_cost_cents(exact_cost),
        "pricing": EVENT_PRICE,
        "rating": None,
    }


def usage_summary(*, organization, start: datetime, end: datetime) -> list[dict]:
    """Totals per event name for ``[start, end)``, one query.

    Returns:
        ``[{"event_name": str, "count": int, "quantity": Decimal, "included": Decimal,
        "billable": Decimal, "cost_cents": int, "pricing": "plan" | "event_price"}]``
        sorted by event name; ``cost_cents`` as the module doc says.
    """
    plan = organization_plan(organization)
    rows = (
        _period_events(organization, start, end)
        .values("event_name")
        .annotate(**_TOTALS)
        .order_by("event_name")
    )
    lines = []
    for row in rows:
        priced = _priced_line(row["event_name"], row["total_quantity"], row["exact_cost"], plan)
        priced.pop("rating")
        lines.append({"event_name": row["event_name"], "count": row["count"], **priced})
    return lines


def usage_report(*, organization, start: datetime, end: datetime, group_by: str) -> list[dict]:
    """Breakdown of ``[start, end)`` by ``group_by`` and event name, one query.

    ``group_by``: ``day`` (calendar day in the billing time zone, ``"YYYY-MM-DD"``),
    ``route`` (the ``dimensions.route`` URL pattern; ``None`` for domain events) or
    ``user`` (``user_id`` and ``user_email``; ``None`` when the event had no user).

    Returns:
        ``[{<group key(s)>, "event_name", "count", "quantity", "cost_cents"}]``, sorted by
        the group key then event name; the ``cost_cents`` of one event name's rows add up
        to its ``usage_summary`` line.
    Raises:
        ValueError: ``group_by`` is not one of ``GROUP_BY_CHOICES``.
    """
    events = _period_events(organization, start, end)
    if group_by == "day":
        events = events.annotate(day=TruncDate("created_at", tzinfo=billing_zone(organization)))
        keys = ["day"]
    elif group_by == "route":
        events = events.annotate(route=KT("dimensions__route"))
        keys = ["route"]
    elif group_by == "user":
        events = events.annotate(user_email=F("user__email"))
        keys = ["user_id", "user_email"]
    else:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY_CHOICES)}")
    rows = list(
        events.values(*keys, "event_name").annotate(**_TOTALS).order_by(*keys, "event_name")
    )
    plan = organization_plan(organization)
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["event_name"], []).append(row)
    for name, group in by_name.items():
        quantity = sum((row["total_quantity"] or Decimal(0) for row in group), Decimal(0))
        exact = sum((row["exact_cost"] or Decimal(0) for row in group), Decimal(0))
        priced = _priced_line(name, quantity, exact, plan)
        weight = "total_quantity" if priced["pricing"] == PLAN else "exact_cost"
        shares = allocate(priced["cost_cents"], [row[weight] or Decimal(0) for row in group])
        for row, share in zip(group, shares, strict=True):
            row["cost_cents"] = share
    result = []
    for row in rows:
        row.pop("exact_cost")
        row["quantity"] = row.pop("total_quantity")
        if group_by == "day":
            row["day"] = row["day"].isoformat()
        result.append(row)
    return result


def billing_period(organization, *, now: datetime | None = None) -> tuple[datetime, datetime, str]:
    """The organization's current billing period ``(start, end, source)``: the Stripe
    subscription's current period when the organization has both ``current_period_start``
    and ``current_period_end`` (kept from Stripe's subscription webhooks) set (``source``
    ``"subscription"``),
    else the calendar month of ``now`` in its billing time zone (``"calendar_month"``,
    ``billing.selectors.month_period``). Half-open ``[start, end)``, aware datetimes."""
    start, end = organization.current_period_start, organization.current_period_end
    if start is not None and end is not None and start < end:
        return start, end, "subscription"
    start, end = month_period(organization, now=now)
    return start, end, "calendar_month"


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: ``Decimal("0.500000") -> "0.5"``."""
    return format(value.normalize(), "f")


def _tier_rows(rating: Rating) -> list[dict]:
    return [
        {
            "start": charge.start,
            "up_to": charge.up_to,
            "unit_amount_decimal": _plain(charge.unit_amount_decimal),
            "quantity": charge.quantity,
            "amount_decimal": _plain(charge.amount_decimal),
            "amount_cents": charge.amount_cents,
        }
        for charge in rating.tiers
    ]


def upcoming_invoice(*, organization, plan: Plan, start: datetime, end: datetime) -> dict:
    """What ``organization`` will pay for ``[start, end)`` on ``plan``, from the usage
    recorded here (one query, as ``usage_summary``).

    Returns:
        ``{"plan": tier, "plan_name": str, "meters": [{"meter", "stripe_price_id",
        "quantity", "included_units", "included", "billable", "tiers": [{"start",
        "up_to", "unit_amount_decimal", "quantity", "amount_decimal", "amount_cents"}],
        "total_cents"}], "total_cents": int}``: every meter of the plan, in the plan's
        order, unused ones with 0; quantities ``Decimal``, amounts integer cents (the
        ``tiers`` of a meter add up to its ``total_cents``). Event names the plan does not
        price are not on the invoice (Stripe bills the plan's prices only).
    """
    quantities = dict(
        _period_events(organization, start, end)
        .filter(event_name__in=list(plan.meters))
        .values("event_name")
        .annotate(total=Sum("quantity"))
        .order_by()
        .values_list("event_name", "total")
    )
    meters = []
    for name, meter in plan.meters.items():
        rating = rate(quantities.get(name) or 0, meter.price)
        meters.append(
            {
                "meter": name,
                "stripe_price_id": meter.stripe_price_id,
                "quantity": rating.quantity,
                "included_units": meter.price.included,
                "included": rating.included,
                "billable": rating.billable,
                "tiers": _tier_rows(rating),
                "total_cents": rating.total_cents,
            }
        )
    return {
        "plan": plan.tier,
        "plan_name": plan.name,
        "meters": meters,
        "total_cents": sum(meter["total_cents"] for meter in meters),
    }
