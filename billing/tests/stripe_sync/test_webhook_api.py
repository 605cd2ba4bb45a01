"""``POST /api/v1/billing/stripe/webhook/``: signatures (the real scheme), stored once by
event id, answered at once with the processing deferred, never billed or rate-limited."""

import json
import time

import pytest
from procrastinate.contrib.django.models import ProcrastinateJob

from billing.models import BillingEvent, StripeWebhookEvent
from billing.tests.stripe_sync.fakes import event_body, sign, subscription

pytestmark = pytest.mark.django_db

URL = "/api/v1/billing/stripe/webhook/"


def body(event_id="evt_1", event_type="customer.subscription.updated"):
    obj = subscription("sub_1", customer="cus_1", status="active", tier="pro")
    return event_body(event_id, event_type, obj, created=int(time.time()))


def process_jobs():
    return ProcrastinateJob.objects.filter(task_name="billing.stripe_webhook_process")


def test_a_signed_event_is_stored_and_its_processing_deferred(plans, deliver):
    response = deliver(body())
    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False}
    event = StripeWebhookEvent.objects.get()
    assert (event.stripe_event_id, event.event_type, event.status) == (
        "evt_1",
        "customer.subscription.updated",
        "received",
    )
    assert event.payload["data"]["object"]["id"] == "sub_1"
    job = process_jobs().get()
    assert job.args == {"event_pk": event.pk}
    assert not response.has_header("RateLimit-Limit")  # no organization: no plan limit
    assert BillingEvent.objects.count() == 0  # never metered


def test_a_replay_is_acknowledged_and_changes_nothing(plans, deliver):
    first = body()
    assert deliver(first).status_code == 200
    again = deliver(first)  # the same event, signed again by Stripe's retry
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert StripeWebhookEvent.objects.count() == 1
    assert process_jobs().count() == 1


@pytest.mark.parametrize(
    "signature, code",
    [
        (None, "signature_missing"),
        ("", "signature_missing"),
        ("garbage", "signature_invalid"),
        ("t=notanumber,v1=abc", "signature_invalid"),
        ("t=1,v0=abc", "signature_invalid"),
    ],
)
def test_a_missing_or_unreadable_signature_is_a_400(plans, deliver, signature, code):
    response = deliver(body(), signature=signature)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code
    assert StripeWebhookEvent.objects.count() == 0


def test_a_signature_with_another_secret_or_of_another_body_is_refused(plans, deliver):
    payload = body()
    assert deliver(payload, signature=sign(payload, secret="whsec_other")).status_code == 400
    tampered = payload.replace(b'"active"', b'"canceled"')
    response = deliver(tampered, signature=sign(payload))
    assert response.status_code == 400
    assert response.json()["code"] == "signature_invalid"
    assert StripeWebhookEvent.objects.count() == 0


def test_a_timestamp_outside_the_tolerance_is_refused(plans, deliver):
    payload = body()
    old = int(time.time()) - plans.STRIPE_WEBHOOK_TOLERANCE_SECONDS - 5
    response = deliver(payload, signature=sign(payload, timestamp=old))
    assert response.status_code == 400
    assert response.json()["code"] == "signature_invalid"
    recent = int(time.time()) - plans.STRIPE_WEBHOOK_TOLERANCE_SECONDS + 30
    assert deliver(payload, signature=sign(payload, timestamp=recent)).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "evt_1"}',
        json.dumps({"id": "evt_1", "type": "x", "created": "yesterday", "data": {"object": {}}}),
        json.dumps({"id": "evt_1", "type": "x", "created": 1, "data": {"object": []}}),
        json.dumps({"id": "", "type": "x", "created": 1, "data": {"object": {}}}),
    ],
)
def test_a_signed_body_that_is_not_an_event_is_a_400(plans, deliver, payload):
    payload = payload.encode() if isinstance(payload, str) else payload
    response = deliver(payload)
    assert response.status_code == 400
    assert response.json()["code"] == "payload_malformed"


def test_bytes_that_are_not_utf8_are_a_400_not_a_500(plans, deliver):
    response = deliver(b"\xff\xfe{}", signature="t=1,v1=00")
    assert response.status_code == 400
    assert response.json()["code"] == "payload_malformed"


def test_without_a_webhook_secret_every_delivery_is_refused(plans, deliver):
    plans.STRIPE_WEBHOOK_SECRET = ""
    response = deliver(body())
    assert response.status_code == 400
    assert response.json()["code"] == "webhook_not_configured"


def test_a_jwt_is_not_needed_and_get_is_not_allowed(plans, anon_api):
    response = anon_api.get(URL)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_a_thin_meter_error_event_is_accepted(plans, deliver):
    payload = json.dumps(
        {
            "id": "evt_thin_1",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "created": "2026-12-01T10:00:00.000Z",
            "related_object": {"id": "mtr_1", "type": "billing.meter"},
        }
    ).encode()
    assert deliver(payload).status_code == 200
    assert StripeWebhookEvent.objects.get().stripe_created_at.isoformat() == (
        "2026-12-01T10:00:00+00:00"
    )


def test_each_of_several_secrets_verifies_its_own_deliveries(plans, deliver):
    plans.STRIPE_WEBHOOK_SECRET = "whsec_snapshot, whsec_thin"
    first, second = body("evt_a"), body("evt_b")
    assert deliver(first, signature=sign(first, secret="whsec_thin")).status_code == 200
    assert deliver(second, signature=sign(second, secret="whsec_snapshot")).status_code == 200
    third = body("evt_c")
    response = deliver(third, signature=sign(third, secret="whsec_neither"))
    assert response.json()["code"] == "signature_invalid"


def test_no_csrf_token_is_needed(plans):
    from django.test import Client

    payload = body()
    response = Client(enforce_csrf_checks=True).post(
        URL, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(payload)
    )
    assert response.status_code == 200, response.content
