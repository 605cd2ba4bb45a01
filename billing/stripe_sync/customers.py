"""The Stripe customer and subscription of a new organization (the onboarding job).

``tenancy.services.organization_onboard`` sends ``organization_onboarded`` inside its
transaction; ``organization_onboarded_receiver`` (connected by ``BillingConfig.ready``)
defers ``billing.stripe_customer_sync`` there, so the job commits with the organization and
onboarding never calls, waits for or fails because of Stripe. Without ``STRIPE_API_KEY``
nothing is deferred and the receiver returns one line saying so.

The job (``customer_subscription_ensure``) creates what is missing, each Stripe request
with an Idempotency-Key derived from the organization (Stripe API reference, "Idempotent
requests": the same key returns the first result for at least 24 hours), so a retried job
(procrastinate retries transient errors for about an hour, ``tenancy.jobs.transient_retry``)
never creates a second customer or subscription; each id is saved by a conditional
``UPDATE ... WHERE <id> = ''``, so a job that runs twice keeps the first.
"""

from __future__ import annotations

import logging

from django.conf import settings

from billing.plans import UnknownPlan, plan_price_ids
from billing.stripe_sync.subscriptions import (
    FINAL_STATUSES,
    from_timestamp,
    subscription_apply,
)
from tenancy.models import Organization

logger = logging.getLogger(__name__)

#: The line an operator sees when onboarding runs with Stripe off.
STRIPE_OFF = (
    "Stripe is off (STRIPE_API_KEY is not set): no Stripe customer or subscription for {slug}."
)


def customer_idempotency_key(organization_id) -> str:
    """``gl-<organization id>-customer``: the key of the organization's customer creation."""
    return f"gl-{organization_id}-customer"


def subscription_idempotency_key(organization_id, customer_id: str) -> str:
    """``gl-<organization id>-subscription-<customer id>``: the key of its first
    subscription's creation (one per customer)."""
    return f"gl-{organization_id}-subscription-{customer_id}"


def organization_onboarded_receiver(sender, organization, plan_tier, **kwargs) -> str:
    """``tenancy.signals.organization_onboarded`` receiver: defer
    ``billing.stripe_customer_sync`` for the new organization in the onboarding
    transaction, with the organization's plan-change lock (``tasks.subscription_lock``);
    without ``STRIPE_API_KEY``, defer nothing. Returns the operator's line
    (``OnboardResult.notes``)."""
    if not settings.STRIPE_API_KEY:
        logger.info(STRIPE_OFF.format(slug=organization.slug))
        return STRIPE_OFF.format(slug=organization.slug)
    from billing.stripe_sync.tasks import customer_sync_job, subscription_lock

    # The lock of plan changes: an owner's first plan change never runs beside this job
    # (both could create a subscription).
    job_id = customer_sync_job.configure(lock=subscription_lock(organization.pk)).defer(
        organization_id=str(organization.pk)
    )
    return f"Stripe: customer and subscription job {job_id} queued for {organization.slug}."


def _metadata(organization: Organization) -> dict:
    return {"organization_id": str(organization.pk), "organization_slug": organization.slug}


def customer_subscription_ensure(
    *, organization: Organization, client, plan_tier: str | None = None, change_id: str = ""
) -> list[str]:
    """Create the organization's Stripe customer, then its subscription to the prices of
    ``plan_tier`` (default: its plan tier; ``billing.plans.plan_price_ids``), each only if the
    organization has none, or, for the subscription, only a final one (canceled,
    ``incomplete_expired``: a firm that resubscribes through a plan change, ``change_id``,
    which then names the new subscription's Idempotency-Key).

    Requests (Stripe API reference): ``POST /v1/customers`` (``name``, ``metadata``
    ``organization_id`` and ``organization_slug``), then ``POST /v1/subscriptions``
    (``customer``, one item per metered price, no quantity; ``metadata``
    ``organization_id`` and ``plan_tier``). The created subscription's state is applied
    with its ``created`` as the instant (``subscription_apply``), so its webhooks, which
    are not older, still apply. A tier without Stripe price ids gets a customer and no
    subscription (logged).

    Returns the lines of what was done. Raises ``stripe.StripeError`` (the job retries
    transient ones).
    """
    lines = []
    organization.refresh_from_db()
    if not organization.stripe_customer_id:
        customer = client.v1.customers.create(
            params={"name": organization.name, "metadata": _metadata(organization)},
            options={"idempotency_key": customer_idempotency_key(organization.pk)},
        )
        Organization.objects.filter(pk=organization.pk, stripe_customer_id="").update(
            stripe_customer_id=customer.id
        )
        organization.refresh_from_db()
        lines.append(f"customer {organization.stripe_customer_id}")
    replacing = organization.subscription_status in FINAL_STATUSES and bool(change_id)
    if organization.stripe_subscription_id and not replacing:
        return lines
    tier = plan_tier or organization.plan_tier
    try:
        prices = plan_price_ids(tier)
    except UnknownPlan:
        prices = {}
    if not prices:
        logger.warning(
            "%s: plan %s has no Stripe price ids (BILLING_PLANS): no subscription created",
            organization.slug,
            tier,
        )
        lines.append(f"no subscription: plan {tier} has no Stripe prices")
        return lines
    customer_id = organization.stripe_customer_id
    key = subscription_idempotency_key(organization.pk, customer_id)
    if replacing:
        key = f"gl-{organization.pk}-subscription-{change_id}"
    subscription = client.v1.subscriptions.create(
        params={
            "customer": customer_id,
            "items": [{"price": prices[meter]} for meter in sorted(prices)],
            "metadata": {**_metadata(organization), "plan_tier": tier},
        },
        options={"idempotency_key": key},
    ).to_dict()
    # A first subscription is recorded at once; a replacement is adopted by
    # subscription_apply (a live subscription newer than the final one held).
    Organization.objects.filter(pk=organization.pk, stripe_subscription_id="").update(
        stripe_subscription_id=subscription["id"]
    )
    as_of = from_timestamp(subscription.get("created"))
    if as_of is not None:
        subscription_apply(organization=organization, subscription=subscription, as_of=as_of)
    lines.append(f"subscription {subscription['id']} ({subscription.get('status')})")
    return lines
