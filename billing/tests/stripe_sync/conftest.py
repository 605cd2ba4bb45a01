"""Fixtures of the Stripe sync tests: plans with price ids, Stripe on (API key and
webhook secret) behind ``FakeStripeApi``, and a webhook poster."""

import pytest
import responses

from billing.tests.stripe_sync.fakes import PLANS, WEBHOOK_SECRET, FakeStripeApi, sign


@pytest.fixture
def plans(settings):
    settings.BILLING_PLANS = PLANS
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_KEY = ""
    return settings


@pytest.fixture
def stripe_api(plans):
    """Stripe on (``STRIPE_API_KEY`` set), every request answered by ``FakeStripeApi``."""
    plans.STRIPE_API_KEY = "sk_test_goldleaves"
    fake = FakeStripeApi()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        yield fake


@pytest.fixture
def deliver(anon_api):
    """``deliver(body, signature=<Stripe's>)``: POST a delivery to the webhook endpoint."""

    def post(body: bytes, signature: str | None = "sign", **headers):
        if signature == "sign":
            signature = sign(body)
        if signature is not None:
            headers["HTTP_STRIPE_SIGNATURE"] = signature
        return anon_api.generic(
            "POST",
            "/api/v1/billing/stripe/webhook/",
            body,
            content_type="application/json",
            **headers,
        )

    return post
