"""Requests under a script prefix: ``SCRIPT_NAME`` ``/x``, path ``/x/api/v1/...``.

gunicorn takes ``SCRIPT_NAME`` from a client's ``SCRIPT_NAME`` header when the client's
address is a trusted forwarder (``forwarded_allow_ips``, 127.0.0.1 by default), and a
deployment under a prefix sets it for every request. Django routes ``PATH_INFO``, so such
a request is served as ``/api/v1/...``. It must also fall under every rule of that path:
billed, rate-limited, its ``Idempotency-Key`` honoured, its write refused on an inactive
subscription, its errors in JSON. Those rules used to compare ``request.path``
(``SCRIPT_NAME + PATH_INFO``), so none of them matched (``core.paths``)."""

import pytest
from rest_framework.test import APIClient

from billing.models import BillingEvent
from cases.models import Client
from tenancy import ratelimit
from tenancy.models import StaffAccess, User
from tenancy.testing import bearer_client, with_rate_limits
from tenancy.tests.factories import PASSWORD, OrganizationFactory, member_of

pytestmark = pytest.mark.django_db

#: What gunicorn puts in the WSGI environ for a ``SCRIPT_NAME: /x`` header.
PREFIX = {"SCRIPT_NAME": "/x"}


def api_events():
    return BillingEvent.objects.filter(event_name="api.request")


def test_a_request_under_a_script_prefix_is_billed_once(api, org):
    response = api.get("/api/v1/cases/", **PREFIX)
    assert response.status_code == 200
    assert response.wsgi_request.path == "/x/api/v1/cases/"
    [event] = api_events()
    assert event.organization_id == org.pk
    assert event.request_id == response["X-Server-Request-ID"]
    assert event.dimensions["endpoint"] == "/api/v1/cases/"  # the routed path
    assert event.dimensions["route"] == "/api/v1/cases/"


def test_a_script_prefix_counts_against_the_same_rate_limit(settings, db):
    settings.BILLING_PLANS = with_rate_limits(settings.BILLING_PLANS, {"starter": {"api": 3}})
    settings.REDIS_URL = ""  # the in-process limiter: the same counting rule
    ratelimit.reset_limiter()
    try:
        client = bearer_client(member_of(OrganizationFactory(plan_tier="starter")))
        prefixed = [client.get("/api/v1/cases/", **PREFIX) for _ in range(4)]
        assert [r.status_code for r in prefixed] == [200, 200, 200, 429]
        assert [r["RateLimit-Remaining"] for r in prefixed[:3]] == ["2", "1", "0"]
        assert prefixed[3].json()["code"] == "throttled"
        assert client.get("/api/v1/cases/").status_code == 429  # one bucket for both
        assert api_events().count() == 3
    finally:
        ratelimit.reset_limiter()


def test_an_idempotency_key_under_a_script_prefix_is_replayed(api, org):
    body = {"name": "Prefixed client"}
    key = {"HTTP_IDEMPOTENCY_KEY": "prefix-1"}
    first = api.post("/api/v1/clients/", body, format="json", **key, **PREFIX)
    again = api.post("/api/v1/clients/", body, format="json", **key, **PREFIX)
    unprefixed = api.post("/api/v1/clients/", body, format="json", **key)
    assert (first.status_code, again.status_code, unprefixed.status_code) == (201, 201, 201)
    assert "Idempotent-Replayed" not in first
    # the fingerprint holds the routed path: the same operation, with or without the prefix
    for replay in (again, unprefixed):
        assert replay["Idempotent-Replayed"] == "true"
        assert replay.json() == first.json()
    assert Client.objects.filter(organization=org, name="Prefixed client").count() == 1
    assert api_events().count() == 1
    other = api.post("/api/v1/clients/", {"name": "Other"}, format="json", **key, **PREFIX)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


def test_a_write_under_a_script_prefix_is_refused_on_a_canceled_subscription(api, org):
    org.subscription_status = "canceled"
    org.save(update_fields=["subscription_status"])
    response = api.post("/api/v1/clients/", {"name": "Refused"}, format="json", **PREFIX)
    assert response.status_code == 402
    assert response.json()["code"] == "subscription_inactive"
    assert not Client.objects.filter(name="Refused").exists()
    assert api_events().count() == 0


def test_an_unknown_api_path_under_a_script_prefix_is_a_json_404_not_billed(api):
    response = api.get("/api/v1/nonexistent/", **PREFIX)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert api_events().count() == 0


def test_a_first_request_under_a_script_prefix_leaves_the_token_endpoints_exempt(owner, org):
    """The token endpoints' paths are reversed on the first request and kept: reversed
    under that request's prefix, they once stayed ``/x/...`` and no later token request
    matched them (a stale bearer header then made every login a 401)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer garbage")
    login = {"email": owner.email, "password": PASSWORD}
    prefixed = client.post("/api/v1/auth/token/", login, format="json", **PREFIX)
    plain = client.post("/api/v1/auth/token/", login, format="json")
    assert (prefixed.status_code, plain.status_code) == (200, 200), plain.content
    assert client.get("/api/v1/organizations/current/").status_code == 401  # others: judged


def test_a_first_admin_request_under_a_script_prefix_keeps_the_admin_cross_tenant(client):
    """The admin's prefix is reversed once, too: kept as ``/x/admin/``, the next admin
    request was no admin request (no cross-tenant access, no audit row)."""
    staff = User.objects.create_superuser(email="staff@goldleaves.test", password=PASSWORD)
    client.force_login(staff)
    assert client.get("/admin/", **PREFIX).status_code == 200
    assert client.get("/admin/").status_code == 200
    paths = list(
        StaffAccess.objects.filter(staff_user_id=staff.pk)
        .order_by("id")
        .values_list("path", flat=True)
    )
    assert paths == ["/x/admin/", "/admin/"]
