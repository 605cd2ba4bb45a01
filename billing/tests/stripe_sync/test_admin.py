"""Staff's view of the Stripe sync: the Stripe ids are read-only on the organization page;
webhook events and reconciliation runs are listed, filterable, never edited."""

from datetime import UTC, datetime

import pytest

from billing.models import StripeWebhookEvent, UsageReconciliation
from tenancy.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_stripe_ids_are_read_only_on_the_organization_page(admin_client, org):
    org.stripe_customer_id, org.stripe_subscription_id = "cus_ro", "sub_ro"
    org.subscription_status = "past_due"
    org.save()
    page = admin_client.get(f"/admin/tenancy/organization/{org.pk}/change/")
    assert page.status_code == 200
    form_fields = page.context["adminform"].form.fields
    for name in ("stripe_customer_id", "stripe_subscription_id", "subscription_status"):
        assert name not in form_fields
    assert b"cus_ro" in page.content and b"sub_ro" in page.content
    admin_client.post(
        f"/admin/tenancy/organization/{org.pk}/change/",
        {
            "name": org.name,
            "slug": org.slug,
            "plan_tier": org.plan_tier,
            "billing_timezone": "UTC",
            "stripe_customer_id": "cus_typed_by_hand",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    org.refresh_from_db()
    assert org.stripe_customer_id == "cus_ro"


def test_webhook_events_needing_attention_are_filterable(admin_client, org):
    created = datetime(2026, 12, 1, tzinfo=UTC)
    flagged = StripeWebhookEvent.objects.create(
        stripe_event_id="evt_flag",
        event_type="billing.meter.error_report_triggered",
        stripe_created_at=created,
        payload={"id": "evt_flag"},
        needs_attention=True,
    )
    StripeWebhookEvent.objects.create(
        stripe_event_id="evt_ok", event_type="invoice.paid", stripe_created_at=created, payload={}
    )
    listing = admin_client.get("/admin/billing/stripewebhookevent/?needs_attention__exact=1")
    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [flagged]
    detail = admin_client.get(f"/admin/billing/stripewebhookevent/{flagged.pk}/change/")
    assert detail.status_code == 200
    assert b"&quot;id&quot;: &quot;evt_flag&quot;" in detail.content
    assert admin_client.get("/admin/billing/stripewebhookevent/add/").status_code == 403


def test_reconciliation_runs_show_their_differences(admin_client):
    run = UsageReconciliation.objects.create(
        period="2026-11",
        ok=False,
        organizations_checked=1,
        differences=[
            {
                "organization": "acme-law",
                "meter": "api.request",
                "stripe_meter": "api_requests",
                "local": "10",
                "stripe": "9",
                "pending_local": "0",
            }
        ],
    )
    assert admin_client.get("/admin/billing/usagereconciliation/").status_code == 200
    page = admin_client.get(f"/admin/billing/usagereconciliation/{run.pk}/change/")
    assert b"acme-law api.request (api_requests): local 10, Stripe 9" in page.content
