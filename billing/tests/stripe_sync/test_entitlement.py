"""Entitlement: while the subscription is ``unpaid`` or ``canceled``, writes under
``/api/v1/`` other than billing and auth are 402 ``subscription_inactive`` and not billed;
reads keep working; ``past_due`` changes nothing."""

import pytest

from billing.models import BillingEvent, IdempotencyKey
from cases.tests.factories import ClientFactory
from tenancy.context import tenant_context

pytestmark = pytest.mark.django_db


def set_status(org, status):
    org.subscription_status = status
    org.save(update_fields=["subscription_status"])


def events(org):
    with tenant_context(org):
        return BillingEvent.objects.for_organization(org).count()


def writes(client_id):
    return [
        ("post", "/api/v1/clients/", {"name": "New client"}),
        ("put", f"/api/v1/clients/{client_id}/", {"name": "Renamed"}),
        ("patch", f"/api/v1/clients/{client_id}/", {"name": "Patched"}),
        ("delete", f"/api/v1/clients/{client_id}/", None),
    ]


@pytest.mark.parametrize("status", ["unpaid", "canceled"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_writes_are_402_and_not_billed(org, api, status, method):
    client = ClientFactory(organization=org, name="Kept")
    set_status(org, status)
    _, url, body = next(w for w in writes(client.pk) if w[0] == method)
    response = getattr(api, method)(url, body, format="json")
    assert response.status_code == 402, response.content
    assert response.json()["code"] == "subscription_inactive"
    assert status in response.json()["detail"]
    assert events(org) == 0
    client.refresh_from_db()
    assert client.name == "Kept"


@pytest.mark.parametrize("status", ["unpaid", "canceled"])
def test_reads_keep_working_and_are_billed(org, api, status):
    client = ClientFactory(organization=org)
    set_status(org, status)
    assert api.get("/api/v1/clients/").status_code == 200
    assert api.get(f"/api/v1/clients/{client.pk}/").status_code == 200
    assert api.head("/api/v1/clients/").status_code == 200
    assert api.options("/api/v1/clients/").status_code == 200
    assert events(org) == 4


@pytest.mark.parametrize("status", ["past_due", "active", "trialing", ""])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_other_statuses_change_nothing(org, api, status, method):
    client = ClientFactory(organization=org)
    set_status(org, status)
    _, url, body = next(w for w in writes(client.pk) if w[0] == method)
    response = getattr(api, method)(url, body, format="json")
    assert response.status_code in (200, 201, 204), response.content


def test_billing_and_auth_stay_writable(org, api, owner):
    set_status(org, "unpaid")
    assert api.post("/api/v1/billing/report-usage/").status_code == 202
    login = api.post(
        "/api/v1/auth/token/",
        {"email": owner.email, "password": "correct-horse-battery"},
        format="json",
    )
    assert login.status_code == 200


def test_a_refused_write_is_not_stored_under_its_idempotency_key(org, api):
    set_status(org, "unpaid")
    headers = {"HTTP_IDEMPOTENCY_KEY": "k-1"}
    first = api.post("/api/v1/clients/", {"name": "X"}, format="json", **headers)
    assert first.status_code == 402
    with tenant_context(org):
        assert IdempotencyKey.objects.for_organization(org).count() == 0
    set_status(org, "active")  # paid: the retry runs
    again = api.post("/api/v1/clients/", {"name": "X"}, format="json", **headers)
    assert again.status_code == 201


def test_an_outsider_is_judged_by_its_own_subscription(org, outsider_org, outsider_api):
    set_status(org, "canceled")
    response = outsider_api.post("/api/v1/clients/", {"name": "Mine"}, format="json")
    assert response.status_code == 201
    set_status(outsider_org, "unpaid")
    assert outsider_api.post("/api/v1/clients/", {"name": "Mine 2"}, format="json").status_code == (
        402
    )
