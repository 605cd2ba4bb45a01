"""Jobs of the Stripe sync (procrastinate; the rules are in ``tenancy.jobs``), on the
billing queue. Each retries transient errors (database, and Stripe's connection errors,
rate limits and 5xx answers) with exponential backoff; every Stripe write carries an
Idempotency-Key, so a retry never repeats one.

* ``billing.stripe_customer_sync(organization_id)``: the onboarding job
  (``customers.customer_subscription_ensure``);
* ``billing.stripe_subscription_change(organization_id, plan_tier, change_id)``: an
  owner's plan change (``subscriptions.subscription_prices_change``), one at a time per
  organization (``subscription_lock``);
* ``billing.stripe_webhook_process(event_pk)``: one stored webhook event
  (``webhooks.webhook_process``).
"""

from __future__ import annotations

import logging

import stripe
from procrastinate.contrib.django import app

from billing.tasks import BILLING_QUEUE
from tenancy.jobs import tenant_job, transient_retry

logger = logging.getLogger(__name__)

#: Stripe errors worth another attempt (stripe-python's exception classes).
STRIPE_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


def subscription_lock(organization_id) -> str:
    """The procrastinate lock of an organization's plan-change jobs."""
    return f"stripe-subscription:{organization_id}"


@app.task(
    name="billing.stripe_customer_sync",
    queue=BILLING_QUEUE,
    retry=transient_retry(*STRIPE_TRANSIENT),
)
@tenant_job
def customer_sync_job(organization) -> str:
    """Create the organization's Stripe customer and subscription if missing; returns
    what was done (the job's log line). Without ``STRIPE_API_KEY`` (unset since the job
    was deferred) does nothing and says so."""
    from django.conf import settings

    from billing.reporting.stripe_api import stripe_client
    from billing.stripe_sync.customers import customer_subscription_ensure

    if not settings.STRIPE_API_KEY:
        return "Stripe is off (STRIPE_API_KEY is not set): nothing done"
    lines = customer_subscription_ensure(organization=organization, client=stripe_client())
    return f"{organization.slug}: " + (", ".join(lines) or "customer and subscription exist")


@app.task(
    name="billing.stripe_subscription_change",
    queue=BILLING_QUEUE,
    retry=transient_retry(*STRIPE_TRANSIENT),
)
@tenant_job
def subscription_change_job(organization, *, plan_tier: str, change_id: str) -> str:
    """Move the organization's subscription to ``plan_tier``'s prices in Stripe
    (``subscription_prices_change``); the local plan follows Stripe's webhook."""
    from billing.reporting.stripe_api import stripe_client
    from billing.stripe_sync.subscriptions import subscription_prices_change

    return subscription_prices_change(
        organization=organization, plan_tier=plan_tier, change_id=change_id, client=stripe_client()
    )


@app.task(
    name="billing.stripe_webhook_process",
    queue=BILLING_QUEUE,
    retry=transient_retry(*STRIPE_TRANSIENT),
)
def webhook_process_job(event_pk: int) -> str:
    """Process the stored Stripe webhook event ``event_pk``; returns its final status."""
    from billing.stripe_sync.webhooks import webhook_process

    return webhook_process(event_pk=event_pk)
