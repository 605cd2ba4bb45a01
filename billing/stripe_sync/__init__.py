"""Stripe customers, subscriptions, webhooks, entitlement and reconciliation, on our own
models and stripe-python (docs/architecture.md, "Stripe: our models on stripe-python").

One module per concern, each with its own logger:

* ``prices``: price ids of a plan tier and the tier of a set of price ids
  (``settings.BILLING_PLANS``);
* ``models``: the webhook event store and the reconciliation runs (non-tenant tables);
* ``customers``: the onboarding job that creates the Stripe customer and subscription;
* ``subscriptions``: applying a Stripe subscription object to its organization (the newest
  state wins) and the owner's plan change;
* ``webhooks``: signature verification, storing each event once, processing it in a job;
* ``entitlement``: the middleware that makes an unpaid or canceled organization read-only;
* ``reconcile``: local usage against Stripe's meter event summaries;
* ``apis`` / ``serializers``: ``POST billing/subscription/`` and the webhook endpoint;
* ``tasks``: the procrastinate jobs.
"""
