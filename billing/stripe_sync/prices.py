"""Plan tiers and Stripe price ids, read from ``settings.BILLING_PLANS``.

``BILLING_PLANS`` (the plans contract, README "Billing with Stripe") is keyed by tier;
each tier's ``meters`` maps a meter (``api.request``, ``doc.upload``, ``doc.processed``) to
its ``stripe_price_id`` ("" while Stripe is not configured). The same two lookups exist in
``billing.plans``; these read the setting directly and keep the same signatures.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings


class UnknownPlanTier(KeyError):
    """A tier that ``settings.BILLING_PLANS`` does not define."""


def _plans() -> dict:
    return getattr(settings, "BILLING_PLANS", None) or {}


def plan_price_ids(tier: str) -> dict[str, str]:
    """``{meter: stripe price id}`` of ``tier`` (e.g. ``{"api.request": "price_..."}``);
    meters whose price id is ``""`` are omitted, so ``{}`` means "no Stripe prices".

    Raises:
        UnknownPlanTier: ``tier`` is not a key of ``settings.BILLING_PLANS``.
    """
    plans = _plans()
    if tier not in plans:
        raise UnknownPlanTier(tier)
    meters = plans[tier].get("meters") or {}
    return {
        meter: str(spec.get("stripe_price_id") or "")
        for meter, spec in meters.items()
        if spec.get("stripe_price_id")
    }


def tier_for_price_ids(price_ids: Iterable[str]) -> str | None:
    """The tier whose price ids these are: the one tier whose non-empty price ids include
    every id given; ``None`` for an empty input, an unknown id, or ids of several tiers
    (a subscription that mixes plans is not one of ours)."""
    wanted = {price for price in price_ids if price}
    if not wanted:
        return None
    matches = [tier for tier in _plans() if wanted <= set(plan_price_ids(tier).values())]
    return matches[0] if len(matches) == 1 else None
