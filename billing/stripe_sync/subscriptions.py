"""Subscriptions: applying Stripe's state to an organization, and the owner's plan change.

**The newest state wins.** Stripe delivers events at least once and in no guaranteed order
(Stripe docs, "Receive Stripe events in your webhook endpoint": "Handle duplicate events",
"Event ordering"). Each state applied carries its instant (``as_of``, UTC): the event's
``created`` when it is applied from a payload, the moment it was fetched when it was read
from Stripe (``STRIPE_API_KEY`` set). ``subscription_apply`` writes only when ``as_of`` is
not older than ``Organization.subscription_updated_at`` (a tie applies: Stripe's
timestamps are whole seconds, and a later delivery of the same second is no older), under
a row lock, so a duplicate or a late delivery never moves the state back. A canceled
(or ``incomplete_expired``) subscription is final: Stripe never reactivates one (API
reference, "Cancel a subscription"), so no other state of that subscription replaces it.

**The plan tier follows Stripe.** The tier comes from the subscription's price ids
(``billing.plans.tier_for_price_ids``); an owner's plan change only asks Stripe to change the
prices (``subscription_change_request`` defers the job, ``subscription_prices_change``
calls Stripe), and the local ``plan_tier`` changes when Stripe's
``customer.subscription.updated`` arrives.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction

from billing.plans import UnknownPlan, plan_price_ids, tier_for_price_ids
from tenancy.models import Organization, SubscriptionStatus

logger = logging.getLogger(__name__)

#: Statuses a subscription never leaves (Stripe API reference, "The Subscription object").
FINAL_STATUSES = frozenset({SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED})


def from_timestamp(value) -> datetime | None:
    """A Stripe timestamp (Unix seconds, int) as an aware UTC datetime; ``None`` stays."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def subscription_price_ids(subscription: dict) -> list[str]:
    """The price id of every item of a Stripe subscription object (a dict as in the API)."""
    items = (subscription.get("items") or {}).get("data") or []
    ids = []
    for item in items:
        price = item.get("price") or {}
        ids.append(price.get("id") if isinstance(price, dict) else str(price))
    return [price for price in ids if price]


def subscription_period(subscription: dict) -> tuple[datetime | None, datetime | None]:
    """The current billing period ``(start, end)`` (UTC) of a subscription object: its own
    ``current_period_start`` / ``_end`` (API versions before 2025-03-31), else its items'
    (newer versions moved them to the subscription items)."""
    start, end = subscription.get("current_period_start"), subscription.get("current_period_end")
    if start is None:
        items = (subscription.get("items") or {}).get("data") or []
        starts = [i["current_period_start"] for i in items if i.get("current_period_start")]
        ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
        start, end = (min(starts) if starts else None), (max(ends) if ends else None)
    return from_timestamp(start), from_timestamp(end)


@dataclass(frozen=True)
class ApplyOutcome:
    """What ``subscription_apply`` did: ``applied`` (True: the organization now mirrors
    this state) and ``reason`` (a line for the event's ``detail`` and the log)."""

    applied: bool
    reason: str


def subscription_apply(*, organization: Organization, subscription: dict, as_of: datetime):
    """Mirror a Stripe subscription object on ``organization`` if it is the newest state.

    Writes ``stripe_subscription_id``, ``subscription_status`` (Stripe's ``status``),
    ``subscription_updated_at`` (= ``as_of``), the current period and, when the price ids
    name one tier, ``plan_tier`` (unknown price ids keep the tier, logged at WARNING).
    Not applied (reason given): ``as_of`` older than the state held; another state of a
    subscription that is final here; a final state of a subscription that is not the
    organization's (an old one ending changes nothing). A different live subscription
    replaces the held one when it is newer.

    Args:
        organization: the subscription's organization (matched by the caller).
        subscription: the Stripe subscription object as a dict (a webhook payload's
            ``data.object``, or ``StripeObject.to_dict()`` of a fetched one).
        as_of: the instant of this state (aware, UTC).
    Returns:
        ``ApplyOutcome``. Runs in its own transaction (a savepoint inside the caller's).
    """
    sub_id = str(subscription.get("id") or "")
    status = str(subscription.get("status") or "")
    if status not in SubscriptionStatus.values or not sub_id:
        return ApplyOutcome(False, f"not a subscription state: id {sub_id!r}, status {status!r}")
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        held = org.subscription_updated_at
        if held is not None and as_of < held:
            return ApplyOutcome(
                False, f"stale: {as_of.isoformat()} is older than {held.isoformat()}"
            )
        if org.stripe_subscription_id and org.stripe_subscription_id != sub_id:
            if status in FINAL_STATUSES:
                return ApplyOutcome(
                    False, f"{sub_id} ({status}) is not the organization's subscription"
                )
        elif org.subscription_status in FINAL_STATUSES and status not in FINAL_STATUSES:
            return ApplyOutcome(False, f"{sub_id} is already {org.subscription_status} (final)")
        org.stripe_subscription_id = sub_id
        org.subscription_status = status
        org.subscription_updated_at = as_of
        org.current_period_start, org.current_period_end = subscription_period(subscription)
        fields = [
            "stripe_subscription_id",
            "subscription_status",
            "subscription_updated_at",
            "current_period_start",
            "current_period_end",
        ]
        price_ids = subscription_price_ids(subscription)
        tier = tier_for_price_ids(price_ids)
        if tier is not None:
            org.plan_tier = tier
            fields.append("plan_tier")
        elif price_ids:
            logger.warning(
                "%s: subscription %s has price ids %s of no single plan (BILLING_PLANS); "
                "plan tier kept at %s",
                org.slug,
                sub_id,
                ", ".join(price_ids),
                org.plan_tier,
            )
        org.save(update_fields=fields)
    organization.refresh_from_db()
    logger.info("%s: subscription %s is %s (plan %s)", org.slug, sub_id, status, org.plan_tier)
    return ApplyOutcome(True, f"{sub_id} {status}, plan {org.plan_tier}")


class SubscriptionChangeRefused(Exception):
    """A plan change the API refuses before anything is written: ``code`` (stable, for
    the JSON error), ``status`` (400 for a bad request, 409 for a state that forbids it)
    and the message."""

    def __init__(self, message: str, *, code: str, status: int):
        super().__init__(message)
        self.code = code
        self.status = status


def subscription_change_request(*, organization: Organization, acting_user, plan_tier: str) -> dict:
    """Ask Stripe, through a job, to move ``organization``'s subscription to the prices of
    ``plan_tier``, or, when it has none yet (onboarded while Stripe was off) or only a
    canceled one, to create its customer (if missing) and a subscription to those prices.
    The local plan is unchanged until Stripe confirms it (the webhook, or Stripe's answer
    to the subscription's creation).

    Defers ``billing.stripe_subscription_change`` in the caller's transaction (the
    request's) with the organization's lock (changes run one at a time, in order) and a
    new change id, from which the job's Idempotency-Key derives: a retried job never
    changes the subscription twice, and a later change is a new request to Stripe.

    Returns:
        ``{"plan_tier": current tier, "requested_plan_tier": plan_tier,
        "subscription_status": str, "change_id": str, "job_id": int}``.
    Raises:
        SubscriptionChangeRefused: 400 ``plan_tier_unknown`` (not in ``BILLING_PLANS``);
            409 ``stripe_disabled`` (``STRIPE_API_KEY`` unset), ``plan_not_priced`` (the
            tier has no Stripe price ids).
    """
    from billing.stripe_sync.tasks import subscription_change_job, subscription_lock

    try:
        prices = plan_price_ids(plan_tier)
    except UnknownPlan:
        tiers = ", ".join(sorted(getattr(settings, "BILLING_PLANS", None) or {}))
        raise SubscriptionChangeRefused(
            f"Unknown plan tier {plan_tier!r}; choose one of: {tiers}.",
            code="plan_tier_unknown",
            status=400,
        ) from None
    if not settings.STRIPE_API_KEY:
        raise SubscriptionChangeRefused(
            "Stripe is off (STRIPE_API_KEY is not set): plans cannot change.",
            code="stripe_disabled",
            status=409,
        )
    if not prices:
        raise SubscriptionChangeRefused(
            f"Plan {plan_tier!r} has no Stripe prices configured (BILLING_PLANS).",
            code="plan_not_priced",
            status=409,
        )
    change_id = str(uuid.uuid4())
    job_id = subscription_change_job.configure(lock=subscription_lock(organization.pk)).defer(
        organization_id=str(organization.pk), plan_tier=plan_tier, change_id=change_id
    )
    logger.info(
        "%s: plan change to %s requested by %s (change %s, job %s)",
        organization.slug,
        plan_tier,
        getattr(acting_user, "email", acting_user),
        change_id,
        job_id,
    )
    return {
        "plan_tier": organization.plan_tier,
        "requested_plan_tier": plan_tier,
        "subscription_status": organization.subscription_status,
        "change_id": change_id,
        "job_id": job_id,
    }


def _meter_of_price(price_id: str) -> str | None:
    for tier in getattr(settings, "BILLING_PLANS", None) or {}:
        for meter, price in plan_price_ids(tier).items():
            if price == price_id:
                return meter
    return None


def subscription_items_for(subscription: dict, plan_tier: str) -> list[dict]:
    """The ``items`` parameter of "Update a subscription" (Stripe API reference) that
    moves ``subscription`` (a dict) to ``plan_tier``'s prices: an item whose meter the plan
    prices differently gets ``{"id", "price"}``; an item of no meter of the plan
    ``{"id", "deleted": True}``; a meter of the plan without an item ``{"price"}``. Empty:
    the subscription already has exactly these prices."""
    wanted = plan_price_ids(plan_tier)
    items, covered = [], set()
    for item in (subscription.get("items") or {}).get("data") or []:
        price = (item.get("price") or {}).get("id")
        meter = _meter_of_price(price)
        if meter in wanted and meter not in covered:
            covered.add(meter)
            if price != wanted[meter]:
                items.append({"id": item["id"], "price": wanted[meter]})
        else:
            items.append({"id": item["id"], "deleted": True})
    items.extend({"price": wanted[m]} for m in sorted(wanted) if m not in covered)
    return items


def subscription_prices_change(
    *, organization: Organization, plan_tier: str, change_id: str, client
):
    """The job's work: read the subscription from Stripe and update its items to
    ``plan_tier``'s prices with ``proration_behavior=create_prorations`` (Stripe's
    proration applies) and ``metadata[plan_tier]``, under the Idempotency-Key
    ``gl-<organization id>-plan-change-<change_id>``. Without a subscription, or with a
    final one, ``customers.customer_subscription_ensure`` creates one at ``plan_tier``.
    Returns a line: what was sent, or that nothing had to change. Raises
    ``stripe.StripeError`` (the job retries transient ones)."""
    from billing.stripe_sync.customers import customer_subscription_ensure

    organization.refresh_from_db()
    if (
        not organization.stripe_subscription_id
        or organization.subscription_status in FINAL_STATUSES
    ):
        lines = customer_subscription_ensure(
            organization=organization, client=client, plan_tier=plan_tier, change_id=change_id
        )
        return f"{organization.slug}: " + (", ".join(lines) or "nothing to create")
    sub_id = organization.stripe_subscription_id
    subscription = client.v1.subscriptions.retrieve(sub_id).to_dict()
    items = subscription_items_for(subscription, plan_tier)
    if not items:
        return f"{organization.slug}: subscription {sub_id} already has the {plan_tier} prices"
    client.v1.subscriptions.update(
        sub_id,
        params={
            "items": items,
            "proration_behavior": "create_prorations",
            "metadata": {"plan_tier": plan_tier},
        },
        options={"idempotency_key": f"gl-{organization.pk}-plan-change-{change_id}"},
    )
    return f"{organization.slug}: subscription {sub_id} moved to the {plan_tier} prices"
