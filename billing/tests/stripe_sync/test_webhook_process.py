"""Processing stored Stripe events (``billing.stripe_webhook_process``): the organization
mirrors its subscription, the newest state wins whatever the order and however often
events come, and what we do not act on is stored and acknowledged."""

import time
from datetime import UTC, datetime

import pytest

from billing.models import StripeWebhookEvent
from billing.tests.stripe_sync.fakes import event_body, subscription
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db

T0 = 1764590000  # 2025-12-01T11:53:20Z


@pytest.fixture
def customer_org(org):
    org.plan_tier = "starter"
    org.stripe_customer_id = "cus_acme"
    org.save()
    return org


def send(deliver, event_id, event_type, obj, *, created):
    response = deliver(event_body(event_id, event_type, obj, created=created))
    assert response.status_code == 200, response.content
    return response


def processed():
    return [(r.outcome, r.result) for r in run_jobs(queues=["billing"])]


def sub(status="active", tier="pro", **kwargs):
    return subscription("sub_acme", customer="cus_acme", status=status, tier=tier, **kwargs)


def test_a_subscription_update_sets_plan_status_and_period(plans, deliver, customer_org):
    send(deliver, "evt_1", "customer.subscription.updated", sub(), created=T0)
    assert processed() == [("succeeded", "processed")]
    customer_org.refresh_from_db()
    assert customer_org.plan_tier == "pro"
    assert customer_org.subscription_status == "active"
    assert customer_org.stripe_subscription_id == "sub_acme"
    assert customer_org.subscription_updated_at == datetime.fromtimestamp(T0, tz=UTC)
    assert customer_org.current_period_start == datetime(2025, 12, 1, tzinfo=UTC)
    assert customer_org.current_period_end == datetime(2026, 1, 1, tzinfo=UTC)
    event = StripeWebhookEvent.objects.get()
    assert event.matched_organization == customer_org
    assert event.processed_at is not None


def test_out_of_order_the_newest_state_wins(plans, deliver, customer_org):
    send(deliver, "evt_new", "customer.subscription.updated", sub("past_due"), created=T0 + 60)
    send(deliver, "evt_old", "customer.subscription.updated", sub("active", "starter"), created=T0)
    assert processed() == [("succeeded", "processed"), ("succeeded", "ignored")]
    customer_org.refresh_from_db()
    assert (customer_org.subscription_status, customer_org.plan_tier) == ("past_due", "pro")
    old = StripeWebhookEvent.objects.get(stripe_event_id="evt_old")
    assert old.detail.startswith("stale:")


def test_a_job_run_twice_changes_nothing_the_second_time(plans, deliver, customer_org):
    from billing.stripe_sync.webhooks import webhook_process

    send(deliver, "evt_1", "customer.subscription.created", sub(), created=T0)
    event = StripeWebhookEvent.objects.get()
    assert webhook_process(event_pk=event.pk) == "processed"
    customer_org.subscription_status = "unpaid"  # as a newer event would have set it
    customer_org.save()
    assert webhook_process(event_pk=event.pk) == "processed"  # already done: left alone
    customer_org.refresh_from_db()
    assert customer_org.subscription_status == "unpaid"


def test_a_deleted_subscription_is_canceled_and_stays_so(plans, deliver, customer_org):
    send(deliver, "evt_1", "customer.subscription.deleted", sub("canceled"), created=T0)
    send(deliver, "evt_2", "customer.subscription.updated", sub("active"), created=T0)
    assert processed() == [("succeeded", "processed"), ("succeeded", "ignored")]
    customer_org.refresh_from_db()
    assert customer_org.subscription_status == "canceled"
    assert "final" in StripeWebhookEvent.objects.get(stripe_event_id="evt_2").detail


def test_a_new_subscription_replaces_a_canceled_one_and_an_old_one_ending_does_not(
    plans, deliver, customer_org
):
    send(deliver, "evt_1", "customer.subscription.deleted", sub("canceled"), created=T0)
    fresh = subscription("sub_new", customer="cus_acme", status="active", tier="enterprise")
    send(deliver, "evt_2", "customer.subscription.created", fresh, created=T0 + 10)
    old_end = subscription("sub_older", customer="cus_acme", status="canceled", tier="starter")
    send(deliver, "evt_3", "customer.subscription.deleted", old_end, created=T0 + 20)
    processed()
    customer_org.refresh_from_db()
    assert customer_org.stripe_subscription_id == "sub_new"
    assert (customer_org.subscription_status, customer_org.plan_tier) == ("active", "enterprise")


def test_unknown_price_ids_keep_the_plan_tier(plans, deliver, customer_org):
    obj = sub()
    obj["items"]["data"][0]["price"]["id"] = "price_someone_elses"
    send(deliver, "evt_1", "customer.subscription.updated", obj, created=T0)
    processed()
    customer_org.refresh_from_db()
    assert (customer_org.subscription_status, customer_org.plan_tier) == ("active", "starter")


def test_an_unknown_type_is_stored_and_acknowledged(plans, deliver, customer_org):
    send(deliver, "evt_1", "charge.refunded", {"id": "ch_1", "customer": "cus_acme"}, created=T0)
    assert processed() == [("succeeded", "ignored")]
    event = StripeWebhookEvent.objects.get()
    assert (event.status, event.needs_attention) == ("ignored", False)


def test_a_customer_of_no_organization_is_stored_logged_and_flagged(
    plans, deliver, customer_org, caplog
):
    stranger = subscription("sub_x", customer="cus_stranger", status="active", tier="pro")
    send(deliver, "evt_1", "customer.subscription.created", stranger, created=T0)
    assert processed() == [("succeeded", "unmatched")]
    event = StripeWebhookEvent.objects.get()
    assert (event.status, event.needs_attention, event.matched_organization) == (
        "unmatched",
        True,
        None,
    )
    assert "cus_stranger matches no organization" in caplog.text
    customer_org.refresh_from_db()
    assert customer_org.subscription_status == ""


def test_the_metadata_names_the_organization_before_its_customer_id_is_saved(plans, deliver, org):
    obj = subscription(
        "sub_1",
        customer="cus_early",
        status="trialing",
        tier="pro",
        metadata={"organization_id": str(org.pk)},
    )
    send(deliver, "evt_1", "customer.subscription.created", obj, created=T0)
    processed()
    org.refresh_from_db()
    assert (org.stripe_customer_id, org.subscription_status) == ("cus_early", "trialing")


def test_metadata_never_takes_over_an_organization_with_another_customer(
    plans, deliver, customer_org
):
    obj = subscription(
        "sub_1",
        customer="cus_other",
        status="active",
        tier="pro",
        metadata={"organization_id": str(customer_org.pk)},
    )
    send(deliver, "evt_1", "customer.subscription.created", obj, created=T0)
    assert processed() == [("succeeded", "unmatched")]
    customer_org.refresh_from_db()
    assert (customer_org.stripe_customer_id, customer_org.subscription_status) == ("cus_acme", "")


def test_invoice_events_are_recorded_from_the_payload_without_an_api_key(
    plans, deliver, customer_org
):
    failed = {"id": "in_1", "customer": "cus_acme", "amount_due": 4200, "attempt_count": 2}
    send(deliver, "evt_1", "invoice.payment_failed", failed, created=T0)
    paid = {"id": "in_2", "customer": "cus_acme", "amount_paid": 4200}
    send(deliver, "evt_2", "invoice.paid", paid, created=T0 + 5)
    assert processed() == [("succeeded", "processed")] * 2
    details = dict(StripeWebhookEvent.objects.values_list("stripe_event_id", "detail"))
    assert details == {
        "evt_1": "invoice in_1 payment failed: 4200 cents due, attempt 2",
        "evt_2": "invoice in_2 paid: 4200 cents",
    }


def test_a_meter_error_report_is_flagged_for_staff(plans, deliver, caplog):
    obj = {
        "id": "mtr_err_1",
        "meter": "mtr_api",
        "summary": "2 events had no customer mapping",
        "reason": {"error_types": [{"code": "no_customer_mapping", "error_count": 2}]},
    }
    send(deliver, "evt_1", "billing.meter.error_report_triggered", obj, created=T0)
    assert processed() == [("succeeded", "processed")]
    event = StripeWebhookEvent.objects.get()
    assert event.needs_attention is True
    assert event.detail == (
        "meter events rejected (meter mtr_api): 2 events had no customer mapping "
        "[no_customer_mapping x2]"
    )
    assert "Stripe rejected meter events" in caplog.text


def test_with_an_api_key_the_current_subscription_is_fetched(stripe_api, deliver, customer_org):
    stripe_api.subscriptions["sub_acme"] = sub("unpaid", "enterprise")
    send(deliver, "evt_1", "customer.subscription.updated", sub("active", "pro"), created=T0)
    paid = {"id": "in_1", "customer": "cus_acme", "amount_paid": 0, "subscription": "sub_acme"}
    send(deliver, "evt_2", "invoice.paid", paid, created=T0 + 1)
    assert processed() == [("succeeded", "processed")] * 2
    assert [(c.method, c.path) for c in stripe_api.calls] == [
        ("GET", "/v1/subscriptions/sub_acme"),
        ("GET", "/v1/subscriptions/sub_acme"),
    ]
    customer_org.refresh_from_db()
    assert (customer_org.subscription_status, customer_org.plan_tier) == ("unpaid", "enterprise")
    assert customer_org.subscription_updated_at.timestamp() > time.time() - 60  # fetched now


def test_stripe_down_while_fetching_retries_the_job(stripe_api, deliver, customer_org):
    stripe_api.fail_next = [503]
    send(deliver, "evt_1", "customer.subscription.updated", sub(), created=T0)
    assert [r.outcome for r in run_jobs(queues=["billing"])] == ["retry"]
    assert StripeWebhookEvent.objects.get().status == "received"


def test_a_subscription_stripe_no_longer_has_is_applied_from_the_payload(
    stripe_api, deliver, customer_org
):
    send(deliver, "evt_1", "customer.subscription.updated", sub("past_due"), created=T0)
    assert processed() == [("succeeded", "processed")]  # the fake answers 404 for sub_acme
    customer_org.refresh_from_db()
    assert customer_org.subscription_status == "past_due"
    assert customer_org.subscription_updated_at == datetime.fromtimestamp(T0, tz=UTC)
