"""``POST /api/v1/billing/subscription/``: owners ask Stripe (through a job) to change the
subscription's prices, with proration; the local plan changes when Stripe's webhook
confirms. And ``GET organizations/current/`` shows the plan and the subscription status."""

import pytest
from procrastinate.contrib.django.models import ProcrastinateJob

from billing.models import BillingEvent
from billing.tests.stripe_sync.fakes import event_body, subscription
from tenancy.context import tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.factories import member_of
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db

URL = "/api/v1/billing/subscription/"


@pytest.fixture
def subscribed(org):
    org.plan_tier = "starter"
    org.stripe_customer_id = "cus_acme"
    org.stripe_subscription_id = "sub_acme"
    org.subscription_status = "active"
    org.save()
    return org


def change_jobs():
    return ProcrastinateJob.objects.filter(task_name="billing.stripe_subscription_change")


def test_the_owner_changes_plan_in_stripe_and_the_webhook_changes_it_here(
    stripe_api, subscribed, api, deliver
):
    stripe_api.subscriptions["sub_acme"] = subscription(
        "sub_acme", customer="cus_acme", status="active", tier="starter"
    )
    response = api.post(URL, {"plan_tier": "pro"}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["plan_tier"], body["requested_plan_tier"], body["subscription_status"]) == (
        "starter",
        "pro",
        "active",
    )
    assert stripe_api.calls == []  # the request never waits for Stripe
    job = change_jobs().get()
    assert job.lock == f"stripe-subscription:{subscribed.pk}"

    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["succeeded"]
    fetch, update = stripe_api.calls
    assert (fetch.method, fetch.path) == ("GET", "/v1/subscriptions/sub_acme")
    assert (update.method, update.path) == ("POST", "/v1/subscriptions/sub_acme")
    assert update.params == {
        "items[0][id]": "si_sub_acme_0",
        "items[0][price]": "price_pro_api",
        "items[1][id]": "si_sub_acme_1",
        "items[1][price]": "price_pro_doc",
        "proration_behavior": "create_prorations",
        "metadata[plan_tier]": "pro",
    }
    assert update.idempotency_key == f"gl-{subscribed.pk}-plan-change-{body['change_id']}"
    subscribed.refresh_from_db()
    assert subscribed.plan_tier == "starter"  # not before Stripe confirms

    confirmed = subscription("sub_acme", customer="cus_acme", status="active", tier="pro")
    stripe_api.subscriptions["sub_acme"] = confirmed
    deliver(event_body("evt_1", "customer.subscription.updated", confirmed, created=1764590000))
    run_jobs(queues=["billing"])
    subscribed.refresh_from_db()
    assert subscribed.plan_tier == "pro"


def test_items_of_other_meters_are_deleted_and_missing_ones_added(stripe_api, subscribed):
    from billing.stripe_sync.subscriptions import subscription_items_for

    current = subscription("sub_acme", customer="cus_acme", status="active", tier="starter")
    current["items"]["data"][1]["price"]["id"] = "price_unknown"
    assert subscription_items_for(current, "enterprise") == [
        {"id": "si_sub_acme_0", "price": "price_enterprise_api"},
        {"id": "si_sub_acme_1", "deleted": True},
        {"price": "price_enterprise_doc"},
    ]
    same = subscription("sub_acme", customer="cus_acme", status="active", tier="pro")
    assert subscription_items_for(same, "pro") == []


def test_a_plan_already_in_place_sends_no_update(stripe_api, subscribed, api):
    stripe_api.subscriptions["sub_acme"] = subscription(
        "sub_acme", customer="cus_acme", status="active", tier="pro"
    )
    assert api.post(URL, {"plan_tier": "pro"}, format="json").status_code == 202
    assert [r.result for r in run_jobs(queues=["billing"])] == [
        "acme-law: subscription sub_acme already has the pro prices"
    ]
    assert [c.method for c in stripe_api.calls] == ["GET"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"plan_tier": "platinum"}, 400, "invalid"),  # not a PlanTier: the schema's enum
        ({}, 400, "invalid"),
        ({"plan_tier": ["pro"]}, 400, "invalid"),
    ],
)
def test_bad_bodies_are_400(stripe_api, subscribed, api, body, status, code):
    response = api.post(URL, body, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code
    assert change_jobs().count() == 0


def test_a_tier_billing_plans_does_not_configure_is_400_plan_tier_unknown(
    stripe_api, subscribed, api, settings
):
    settings.BILLING_PLANS = {k: v for k, v in settings.BILLING_PLANS.items() if k != "enterprise"}
    response = api.post(URL, {"plan_tier": "enterprise"}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "plan_tier_unknown")
    assert change_jobs().count() == 0


def test_stripe_off_is_409(plans, subscribed, api):
    response = api.post(URL, {"plan_tier": "pro"}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "stripe_disabled"


def test_without_a_subscription_the_job_creates_customer_and_subscription(stripe_api, org, api):
    """An organization onboarded while Stripe was off gets both through a plan change."""
    org.plan_tier = "starter"
    org.save()
    response = api.post(URL, {"plan_tier": "pro"}, format="json")
    assert response.status_code == 202
    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["succeeded"]
    customer, created = stripe_api.calls
    assert customer.path == "/v1/customers"
    assert created.params["items[0][price]"] == "price_pro_api"
    assert created.params["metadata[plan_tier]"] == "pro"
    assert created.idempotency_key == f"gl-{org.pk}-subscription-cus_fake1"
    org.refresh_from_db()
    assert (org.stripe_subscription_id, org.subscription_status, org.plan_tier) == (
        "sub_fake2",
        "active",
        "pro",  # Stripe's answer to the creation confirms it
    )


def test_a_canceled_firm_resubscribes_with_a_new_subscription(stripe_api, subscribed, api):
    subscribed.subscription_status = "canceled"
    subscribed.save()
    response = api.post(URL, {"plan_tier": "enterprise"}, format="json")
    assert response.status_code == 202  # billing/ stays writable while canceled
    run_jobs(queues=["billing"])
    (created,) = stripe_api.calls  # the customer exists: only the subscription
    assert created.path == "/v1/subscriptions"
    assert created.params["customer"] == "cus_acme"
    change_id = response.json()["change_id"]
    assert created.idempotency_key == f"gl-{subscribed.pk}-subscription-{change_id}"
    subscribed.refresh_from_db()
    assert (subscribed.stripe_subscription_id, subscribed.subscription_status) == (
        "sub_fake1",
        "active",
    )
    assert subscribed.plan_tier == "enterprise"


def test_a_plan_without_prices_is_409(stripe_api, subscribed, api, settings):
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "pro": {"meters": {}}}
    response = api.post(URL, {"plan_tier": "pro"}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "plan_not_priced"


def test_only_owners_may_change_plan(stripe_api, subscribed):
    for role in ("member", "admin"):
        response = bearer_client(member_of(subscribed, role=role)).post(
            URL, {"plan_tier": "pro"}, format="json"
        )
        assert response.status_code == 403
        assert response.json()["code"] == "role_forbidden"
    assert change_jobs().count() == 0


def test_no_token_is_401_and_an_outsider_acts_on_its_own_organization(
    stripe_api, subscribed, anon_api, outsider_api, outsider_org
):
    assert anon_api.post(URL, {"plan_tier": "pro"}, format="json").status_code == 401
    response = outsider_api.post(URL, {"plan_tier": "pro"}, format="json")
    assert response.status_code == 202
    job = change_jobs().get()  # for the outsider's own organization, never ours
    assert job.args["organization_id"] == str(outsider_org.pk)
    assert str(subscribed.pk) not in response.content.decode()


def test_the_change_request_is_billed_as_any_request(stripe_api, subscribed, api):
    api.post(URL, {"plan_tier": "pro"}, format="json")
    with tenant_context(subscribed):
        assert BillingEvent.objects.for_organization(subscribed).count() == 1


def test_current_organization_shows_plan_and_subscription_status(subscribed, api, outsider_api):
    body = api.get("/api/v1/organizations/current/").json()
    assert (body["plan_tier"], body["subscription_status"]) == ("starter", "active")
    assert "stripe_subscription_id" not in body and "stripe_customer_id" not in body
    other = outsider_api.get("/api/v1/organizations/current/").json()
    assert (other["id"], other["subscription_status"]) != (str(subscribed.pk), "active")
    assert other["subscription_status"] == ""


def test_patching_the_organization_cannot_set_the_subscription(subscribed, api):
    response = api.patch(
        "/api/v1/organizations/current/",
        {"subscription_status": "canceled", "plan_tier": "enterprise"},
        format="json",
    )
    assert response.status_code == 200
    subscribed.refresh_from_db()
    assert (subscribed.subscription_status, subscribed.plan_tier) == ("active", "starter")
