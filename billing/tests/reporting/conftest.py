"""Fixtures of the usage-reporting tests: Stripe settings, ``FakeStripe`` behind
``responses``, and an organization with a Stripe customer."""

import pytest
import responses

from billing.tests.fakes import METER_URL, FakeStripe


@pytest.fixture
def stripe_settings(settings):
    settings.STRIPE_API_KEY = "sk_test_goldleaves"
    settings.STRIPE_METERS = {"api.request": "api_requests", "doc.upload": "documents"}
    settings.STRIPE_MAX_ATTEMPTS = 3
    settings.STRIPE_RETRY_BACKOFF_SECONDS = 0
    return settings


@pytest.fixture
def fake_stripe(stripe_settings):
    fake = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, METER_URL, callback=fake)
        yield fake


@pytest.fixture
def customer_org(org):
    org.stripe_customer_id = "cus_acme"
    org.save(update_fields=["stripe_customer_id"])
    return org
