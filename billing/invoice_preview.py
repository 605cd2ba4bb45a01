"""Stripe's own invoice preview beside ours: ``upcoming-invoice/?compare=stripe``.

Stripe previews the next invoice of a customer with ``POST /v1/invoices/create_preview``
(Stripe API reference, "Create a preview invoice"; stripe-python
``client.v1.invoices.create_preview``), given ``customer`` and, when we know it,
``subscription``. Each line of a metered price names it in
``pricing.price_details.price`` (older API versions: ``price.id``) with ``amount`` in
cents and ``quantity_decimal``. ``compare`` maps those lines to our meters by the plan's
``stripe_price_id`` and lists every difference.

Why a difference is not always an error: Stripe sees the usage the hourly report has sent
(``billing.reporting``), so the current, unreported hour shows here and not there yet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from rest_framework.exceptions import APIException

from billing.reporting.stripe_api import stripe_client


class StripeNotConfigured(APIException):
    """409: ``STRIPE_API_KEY`` is empty, so there is no Stripe to compare with."""

    status_code = 409
    default_code = "stripe_not_configured"
    default_detail = "Stripe is not configured here (STRIPE_API_KEY is empty): nothing to compare."


class StripeCustomerMissing(APIException):
    """409: the organization has no ``stripe_customer_id`` yet."""

    status_code = 409
    default_code = "stripe_customer_missing"
    default_detail = "This organization has no Stripe customer yet: nothing to compare."


class StripeUnavailable(APIException):
    """502: Stripe answered with an error or did not answer."""

    status_code = 502
    default_code = "stripe_unavailable"
    default_detail = "Stripe did not give an invoice preview; try again later."


def _get(obj, key, default=None):
    try:
        value = obj[key]
    except (KeyError, TypeError, IndexError):
        return default
    return default if value is None else value


def _price_id(line) -> str:
    details = _get(_get(line, "pricing", {}), "price_details", {})
    price = _get(details, "price") or _get(line, "price")
    if isinstance(price, str):
        return price
    return _get(price, "id", "") or ""


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def stripe_preview(*, organization, meters: list[dict], client_factory=stripe_client) -> dict:
    """Stripe's preview of ``organization``'s next invoice, its lines mapped to ``meters``
    (the ``meters`` of ``billing.usage.upcoming_invoice``).

    Returns:
        ``{"total_cents": int, "currency": str, "period_start", "period_end" (UTC datetimes
        or None), "lines": [{"meter": str | None, "stripe_price_id": str, "quantity":
        Decimal | None, "amount_cents": int, "period_start", "period_end"}]}``.
    Raises:
        StripeNotConfigured: ``STRIPE_API_KEY`` is empty (409).
        StripeCustomerMissing: no ``stripe_customer_id`` (409).
        StripeUnavailable: any ``stripe.StripeError`` (502; logged by stripe-python).
    """
    import stripe

    if not settings.STRIPE_API_KEY:
        raise StripeNotConfigured()
    if not organization.stripe_customer_id:
        raise StripeCustomerMissing()
    params = {"customer": organization.stripe_customer_id}
    subscription = organization.stripe_subscription_id
    if subscription:
        params["subscription"] = subscription
    try:
        preview = client_factory().v1.invoices.create_preview(params=params)
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe did not give an invoice preview: {exc}") from None
    by_price = {m["stripe_price_id"]: m["meter"] for m in meters if m["stripe_price_id"]}
    lines = []
    for line in _get(_get(preview, "lines", {}), "data", []):
        price_id = _price_id(line)
        quantity = _get(line, "quantity_decimal", _get(line, "quantity"))
        period = _get(line, "period", {})
        lines.append(
            {
                "meter": by_price.get(price_id),
                "stripe_price_id": price_id,
                "quantity": None if quantity is None else Decimal(str(quantity)),
                "amount_cents": int(_get(line, "amount", 0)),
                "period_start": _timestamp(_get(period, "start")),
                "period_end": _timestamp(_get(period, "end")),
            }
        )
    return {
        "total_cents": int(_get(preview, "total", 0)),
        "currency": _get(preview, "currency", ""),
        "period_start": _timestamp(_get(preview, "period_start")),
        "period_end": _timestamp(_get(preview, "period_end")),
        "lines": lines,
    }


def compare(*, invoice: dict, preview: dict, check_period: bool) -> list[dict]:
    """Every difference between our ``invoice`` (``billing.usage.upcoming_invoice`` plus
    ``start``/``end``) and Stripe's ``preview`` (``stripe_preview``).

    Returns:
        ``[{"meter": str | None, "field": str, "local": str | None, "stripe": str | None}]``
        (values as strings, ``None`` when one side has nothing): ``amount_cents`` and
        ``quantity`` per meter (a meter Stripe has no line for counts as 0 there),
        ``line`` for a Stripe line whose price is no meter of the plan, ``period`` when
        ``check_period`` (the period is the subscription's) and a line's period is not
        ours, and ``total_cents``. ``[]``: the two agree.
    """
    differences = []
    for meter in invoice["meters"]:
        lines = [line for line in preview["lines"] if line["meter"] == meter["meter"]]
        stripe_amount = sum(line["amount_cents"] for line in lines)
        if stripe_amount != meter["total_cents"]:
            differences.append(
                _difference(meter["meter"], "amount_cents", meter["total_cents"], stripe_amount)
            )
        quantities = [line["quantity"] for line in lines if line["quantity"] is not None]
        stripe_quantity = sum(quantities, Decimal(0))
        if stripe_quantity != meter["quantity"]:
            differences.append(
                _difference(meter["meter"], "quantity", meter["quantity"], stripe_quantity)
            )
        for line in lines:
            period = (line["period_start"], line["period_end"])
            if check_period and period != (invoice["start"], invoice["end"]):
                ours = f"{invoice['start'].isoformat()}/{invoice['end'].isoformat()}"
                theirs = "/".join(p.isoformat() if p else "" for p in period)
                differences.append(_difference(meter["meter"], "period", ours, theirs))
    for line in preview["lines"]:
        if line["meter"] is None:
            differences.append(
                _difference(
                    None, "line", None, f"{line['stripe_price_id']}: {line['amount_cents']}"
                )
            )
    if preview["total_cents"] != invoice["total_cents"]:
        differences.append(
            _difference(None, "total_cents", invoice["total_cents"], preview["total_cents"])
        )
    return differences


def _difference(meter, field, local, stripe) -> dict:
    return {
        "meter": meter,
        "field": field,
        "local": None if local is None else str(local),
        "stripe": None if stripe is None else str(stripe),
    }
