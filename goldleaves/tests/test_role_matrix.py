"""The role matrix: every API endpoint and method, for each role, an outsider organization
and no token (``tenancy.permissions``; the README's "Roles" table is ``MATRIX`` below).

The endpoints are enumerated as the OpenAPI schema enumerates them (drf-spectacular's
``EndpointEnumerator`` over the URL resolver), so an endpoint or method without a row in
``MATRIX`` fails ``test_every_endpoint_has_a_row``.
"""

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from billing.models import MeterReport
from cases.tests.factories import CaseFactory, ClientFactory
from tenancy.context import tenant_context
from tenancy.invitations import invitation_create
from tenancy.testing import bearer_client
from tenancy.tests.factories import OrganizationFactory, member_of

pytestmark = pytest.mark.django_db

PUBLIC, MEMBER, ADMIN, OWNER = "public", "member", "admin", "owner"
ROLES = [MEMBER, ADMIN, OWNER]
RANK = {MEMBER: 1, ADMIN: 2, OWNER: 3}

#: (path as in the schema, method) -> the least role that may call it
MATRIX = {
    ("/api/v1/auth/token/", "POST"): PUBLIC,
    ("/api/v1/auth/token/refresh/", "POST"): PUBLIC,
    ("/api/v1/auth/logout/", "POST"): PUBLIC,
    ("/api/v1/auth/invitations/accept/", "POST"): PUBLIC,
    ("/api/v1/organizations/", "GET"): MEMBER,
    ("/api/v1/organizations/current/", "GET"): MEMBER,
    ("/api/v1/organizations/current/", "PATCH"): OWNER,
    ("/api/v1/organizations/current/invitations/", "GET"): ADMIN,
    ("/api/v1/organizations/current/invitations/", "POST"): ADMIN,
    ("/api/v1/organizations/current/invitations/{id}/", "DELETE"): ADMIN,
    ("/api/v1/clients/", "GET"): MEMBER,
    ("/api/v1/clients/", "POST"): MEMBER,
    ("/api/v1/clients/{id}/", "GET"): MEMBER,
    ("/api/v1/clients/{id}/", "PUT"): MEMBER,
    ("/api/v1/clients/{id}/", "PATCH"): MEMBER,
    ("/api/v1/clients/{id}/", "DELETE"): ADMIN,
    ("/api/v1/cases/", "GET"): MEMBER,
    ("/api/v1/cases/", "POST"): MEMBER,
    ("/api/v1/cases/{id}/", "GET"): MEMBER,
    ("/api/v1/cases/{id}/", "PUT"): MEMBER,
    ("/api/v1/cases/{id}/", "PATCH"): MEMBER,
    ("/api/v1/cases/{id}/", "DELETE"): ADMIN,
    ("/api/v1/documents/", "GET"): MEMBER,
    ("/api/v1/documents/", "POST"): MEMBER,
    ("/api/v1/documents/{id}/", "GET"): MEMBER,
    ("/api/v1/documents/{id}/", "PUT"): MEMBER,
    ("/api/v1/documents/{id}/", "PATCH"): MEMBER,
    ("/api/v1/documents/{id}/", "DELETE"): ADMIN,
    ("/api/v1/documents/{id}/download/", "GET"): MEMBER,
    ("/api/v1/billing/events/", "GET"): ADMIN,
    ("/api/v1/billing/usage-summary/{organization_id}/", "GET"): ADMIN,
    ("/api/v1/billing/usage-report/{organization_id}/", "GET"): ADMIN,
    ("/api/v1/billing/health/", "GET"): ADMIN,
    ("/api/v1/billing/upcoming-invoice/", "GET"): ADMIN,
    ("/api/v1/billing/report-usage/", "POST"): ADMIN,
    ("/api/v1/billing/report-usage/{id}/", "GET"): ADMIN,
    ("/api/v1/billing/subscription/", "POST"): OWNER,
    ("/api/v1/billing/stripe/webhook/", "POST"): PUBLIC,
}

#: Public endpoints whose empty request is refused for another reason than a missing field.
PUBLIC_EMPTY_CODES = {"/api/v1/billing/stripe/webhook/": "signature_missing"}


def schema_endpoints() -> set[tuple[str, str]]:
    """``(path, method)`` of every operation the OpenAPI schema would show (``{pk}``
    written ``{id}``, as the schema does: ``SCHEMA_COERCE_PATH_PK``)."""
    return {
        (path.replace("{pk}", "{id}"), method)
        for path, _regex, method, _view in EndpointEnumerator().get_api_endpoints()
        if path.startswith("/api/v1/")
    }


def test_every_endpoint_has_a_row():
    endpoints = schema_endpoints()
    assert endpoints - set(MATRIX) == set(), "endpoints without a row in the role matrix"
    assert set(MATRIX) - endpoints == set(), "rows for endpoints that do not exist"


class World:
    """An organization with one user per role, objects to address, and an outsider."""

    def __init__(self):
        self.org = OrganizationFactory(name="Matrix Law", slug="matrix-law")
        self.users = {role: member_of(self.org, role=role) for role in ROLES}
        # A Stripe subscription, so that a plan change (POST billing/subscription/) is
        # accepted (the job it defers is not run here).
        self.org.stripe_subscription_id = "sub_matrix"
        self.org.save(update_fields=["stripe_subscription_id"])
        self.outsider_org = OrganizationFactory(name="Elsewhere", slug="elsewhere")
        self.outsider = member_of(self.outsider_org)
        self.client_obj = ClientFactory(organization=self.org)
        self.case = CaseFactory(organization=self.org)
        upload = SimpleUploadedFile("brief.txt", b"hello\n", content_type="text/plain")
        created = bearer_client(self.users[OWNER]).post(
            "/api/v1/documents/", {"case": str(self.case.pk), "file": upload}, format="multipart"
        )
        assert created.status_code == 201, created.content
        self.document_id = created.json()["id"]
        with tenant_context(self.org):
            self.report = MeterReport.objects.create(
                organization=self.org, until=self.case.opened_at
            )
        self.invitation = self._invitation()

    def _invitation(self):
        with tenant_context(self.org):
            return invitation_create(
                organization=self.org,
                acting_user=None,
                email=f"invitee-{uuid.uuid4().hex[:8]}@matrix.test",
                role="member",
            )

    def url(self, path: str) -> str:
        ids = {
            "/api/v1/clients/": self.client_obj.pk,
            "/api/v1/cases/": self.case.pk,
            "/api/v1/documents/": self.document_id,
            "/api/v1/billing/report-usage/": self.report.pk,
            "/api/v1/organizations/current/invitations/": self.invitation.pk,
        }
        if "{id}" in path:
            prefix = path.split("{id}")[0]
            path = path.replace("{id}", str(ids[prefix]))
        return path.replace("{organization_id}", str(self.org.pk))

    def body(self, path: str, method: str) -> tuple[dict, str]:
        """A valid body for a write, and its format."""
        if path.startswith("/api/v1/clients/"):
            return {"name": f"Client {uuid.uuid4().hex[:6]}"}, "json"
        if path.startswith("/api/v1/cases/"):
            return {
                "client": str(self.case.client_id),
                "title": "A matter",
                "reference_number": f"M-{uuid.uuid4().hex[:8]}",
            }, "json"
        if path == "/api/v1/documents/":
            upload = SimpleUploadedFile("note.txt", b"note\n", content_type="text/plain")
            return {"case": str(self.case.pk), "file": upload}, "multipart"
        if path.startswith("/api/v1/documents/"):
            return {"case": str(self.case.pk)}, "json"
        if path == "/api/v1/organizations/current/":
            return {"name": "Matrix Law LLP"}, "json"
        if path == "/api/v1/billing/subscription/":
            return {"plan_tier": "pro"}, "json"
        if path == "/api/v1/organizations/current/invitations/":
            return {"email": f"new-{uuid.uuid4().hex[:8]}@matrix.test", "role": "member"}, "json"
        return {}, "json"

    def fresh_targets(self):
        """New objects for a DELETE (one per role: a deleted object is gone). A client
        with no case: a client with cases cannot be deleted."""
        self.client_obj = ClientFactory(organization=self.org)
        self.case = CaseFactory(organization=self.org)
        upload = SimpleUploadedFile("again.txt", b"again\n", content_type="text/plain")
        created = bearer_client(self.users[OWNER]).post(
            "/api/v1/documents/", {"case": str(self.case.pk), "file": upload}, format="multipart"
        )
        self.document_id = created.json()["id"]
        self.invitation = self._invitation()


#: Stripe on, with a priced plan, for the plan-change endpoint (no Stripe request is sent:
#: the change is a job, not run by these tests) and the webhook.
STRIPE_ON = {
    "STRIPE_API_KEY": "sk_test_matrix",
    "STRIPE_WEBHOOK_SECRET": "whsec_matrix",
    "BILLING_PLANS": {"pro": {"meters": {"api.request": {"stripe_price_id": "price_pro"}}}},
}


def call(client, world, path, method):
    body, fmt = world.body(path, method)
    url = world.url(path)
    with override_settings(**STRIPE_ON):
        if method in ("GET", "DELETE"):
            return getattr(client, method.lower())(url)
        return getattr(client, method.lower())(url, body, format=fmt)


PROTECTED = sorted(key for key, role in MATRIX.items() if role != PUBLIC)


@pytest.mark.parametrize("path, method", PROTECTED, ids=[f"{m} {p}" for p, m in PROTECTED])
def test_roles(path, method):
    world = World()
    least = MATRIX[(path, method)]
    for role in ROLES:
        if method == "DELETE":
            world.fresh_targets()
        response = call(bearer_client(world.users[role]), world, path, method)
        if RANK[role] >= RANK[least]:
            assert response.status_code in (200, 201, 202, 204), (role, response.content)
        else:
            assert response.status_code == 403, (role, response.content)
            assert response.json()["code"] == "role_forbidden", (role, response.content)


@pytest.mark.parametrize("path, method", PROTECTED, ids=[f"{m} {p}" for p, m in PROTECTED])
def test_no_token_is_401_and_an_outsider_gets_404_for_our_ids(path, method):
    world = World()
    anonymous = call(APIClient(), world, path, method)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "not_authenticated"
    outsider = call(bearer_client(world.outsider), world, path, method)
    if "{" in path:
        assert outsider.status_code == 404, outsider.content
        assert outsider.json()["code"] == "not_found"
    else:  # lists and creates act on the outsider's own organization: never ours
        assert outsider.status_code != 403, outsider.content
        assert str(world.org.pk) not in outsider.content.decode()
        assert world.client_obj.name not in outsider.content.decode()


@pytest.mark.parametrize("path", sorted(p for (p, m), r in MATRIX.items() if r == PUBLIC))
def test_public_endpoints_need_no_token(path, db):
    with override_settings(**STRIPE_ON):
        response = APIClient().post(path, {}, format="json")
    assert response.status_code == 400  # a missing field (or signature), not a 401/403
    assert response.json()["code"] == PUBLIC_EMPTY_CODES.get(path, "invalid")


def test_staff_pass_role_checks(db):
    world = World()
    staff = member_of(world.org, role=MEMBER, is_staff=True)
    response = bearer_client(staff).get("/api/v1/billing/events/")
    assert response.status_code == 200


def test_head_is_judged_as_get_and_options_needs_a_member(db):
    world = World()
    member = bearer_client(world.users[MEMBER])
    assert member.head("/api/v1/billing/events/").status_code == 403
    assert member.head("/api/v1/clients/").status_code == 200
    assert member.options("/api/v1/billing/events/").status_code == 200
