"""Onboarding defers the Stripe customer and subscription job in its transaction; the job
creates both with Idempotency-Keys derived from the organization, is safe to run twice,
and onboarding never fails because Stripe is down or off."""

import pytest
from django.core.management import call_command
from procrastinate.contrib.django.models import ProcrastinateJob

from tenancy.models import Organization
from tenancy.services import organization_onboard
from tenancy.tests.jobs import make_jobs_due, run_jobs

pytestmark = pytest.mark.django_db


def sync_jobs():
    return ProcrastinateJob.objects.filter(task_name="billing.stripe_customer_sync")


def onboard(plan="pro"):
    return organization_onboard(name="Brand New Law", owner_email="o@brand.test", plan_tier=plan)


def test_onboarding_defers_the_job_and_the_job_creates_customer_and_subscription(stripe_api):
    result = onboard()
    org = result.organization
    assert stripe_api.calls == []  # onboarding itself never calls Stripe
    job = sync_jobs().get()
    assert job.args == {"organization_id": str(org.pk)}
    assert job.lock == f"stripe-subscription:{org.pk}"  # never beside a plan change
    assert result.notes[0].startswith("Stripe: customer and subscription job ")

    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["succeeded"]
    customer, sub = stripe_api.calls
    assert (customer.method, customer.path) == ("POST", "/v1/customers")
    assert customer.params == {
        "name": "Brand New Law",
        "metadata[organization_id]": str(org.pk),
        "metadata[organization_slug]": "brand-new-law",
    }
    assert customer.idempotency_key == f"gl-{org.pk}-customer"
    assert (sub.method, sub.path) == ("POST", "/v1/subscriptions")
    assert sub.params == {
        "customer": "cus_fake1",
        "items[0][price]": "price_pro_api",
        "items[1][price]": "price_pro_doc",
        "metadata[organization_id]": str(org.pk),
        "metadata[organization_slug]": "brand-new-law",
        "metadata[plan_tier]": "pro",
    }
    assert sub.idempotency_key == f"gl-{org.pk}-subscription-cus_fake1"
    org.refresh_from_db()
    assert (org.stripe_customer_id, org.stripe_subscription_id) == ("cus_fake1", "sub_fake2")
    assert (org.subscription_status, org.plan_tier) == ("active", "pro")


def test_the_job_run_twice_creates_nothing_more(stripe_api):
    from billing.stripe_sync.tasks import customer_sync_job

    org = onboard().organization
    run_jobs(queues=["billing"])
    calls = len(stripe_api.calls)
    customer_sync_job(organization_id=str(org.pk))
    assert len(stripe_api.calls) == calls


def test_a_retry_after_a_lost_answer_reuses_the_keys(stripe_api):
    """The customer was created but the job died before saving its id: the retry sends
    the same Idempotency-Key and Stripe answers the same customer."""
    from billing.reporting.stripe_api import stripe_client
    from billing.stripe_sync.customers import customer_subscription_ensure

    org = onboard().organization
    run_jobs(queues=["billing"])
    Organization.objects.filter(pk=org.pk).update(stripe_customer_id="", stripe_subscription_id="")
    customer_subscription_ensure(organization=org, client=stripe_client())
    org.refresh_from_db()
    assert (org.stripe_customer_id, org.stripe_subscription_id) == ("cus_fake1", "sub_fake2")
    keys = [c.idempotency_key for c in stripe_api.posts("/v1/customers")]
    assert keys == [f"gl-{org.pk}-customer"] * 2


def test_stripe_down_never_fails_onboarding_and_the_job_retries(stripe_api):
    stripe_api.fail_next = [500]
    result = onboard()
    assert result.organization_created
    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["retry"]
    org = Organization.objects.get(pk=result.organization.pk)
    assert org.stripe_customer_id == ""


def test_a_connection_error_is_retried_then_succeeds(stripe_api):
    import requests

    stripe_api.fail_next = []
    org = onboard().organization
    original = stripe_api._route
    state = {"down": True}

    def once_down(method, path, params):
        if state.pop("down", False):
            raise requests.ConnectionError("connection refused")
        return original(method, path, params)

    stripe_api._route = once_down
    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["retry"]
    make_jobs_due()
    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["succeeded"]
    org.refresh_from_db()
    assert org.stripe_subscription_id


def test_a_plan_without_prices_gets_a_customer_and_no_subscription(stripe_api, settings):
    settings.BILLING_PLANS = {"starter": {"meters": {"api.request": {"stripe_price_id": ""}}}}
    org = onboard(plan="starter").organization
    assert [r.result for r in run_jobs(queues=["billing"])] == [
        "brand-new-law: customer cus_fake1, no subscription: plan starter has no Stripe prices"
    ]
    assert stripe_api.posts("/v1/subscriptions") == []
    org.refresh_from_db()
    assert (org.stripe_customer_id, org.stripe_subscription_id) == ("cus_fake1", "")


def test_without_an_api_key_nothing_is_deferred_and_one_line_says_so(plans, capsys):
    call_command("onboard_tenant", name="Brand New Law", owner_email="o@brand.test")
    out = capsys.readouterr().out
    assert (
        "Stripe is off (STRIPE_API_KEY is not set): no Stripe customer or subscription for "
        "brand-new-law." in out
    )
    assert sync_jobs().count() == 0


def test_a_dry_run_defers_nothing(stripe_api):
    call_command("onboard_tenant", name="Brand New Law", owner_email="o@brand.test", dry_run=True)
    assert sync_jobs().count() == 0
    assert not Organization.objects.filter(slug="brand-new-law").exists()


def test_setup_demo_says_stripe_is_off(plans, capsys):
    call_command("setup_demo")
    call_command("setup_demo")  # the demo exists: still says so
    out = capsys.readouterr().out
    assert out.count("Stripe is off (STRIPE_API_KEY is not set)") == 2
