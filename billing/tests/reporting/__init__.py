"""Tests of ``billing.reporting``: one test module per module of the package, and one for
migration 0006 (the outbox's ``first_sent_at``).

Stripe is ``billing.tests.fakes.FakeStripe`` behind ``responses`` (HTTP intercepted at
stripe-python's client, so its own request code runs); the fixtures are in this package's
``conftest.py``, the shared hour, events and expected requests in ``scenario.py``.
"""
