"""Every admin screen opens for staff, with organization filters and search, under RLS too."""

import pytest

from cases.tests.factories import CaseFactory
from tenancy.models import User

# rls_raw: no cross-tenant wrapper around the test body, so with RLS_ENABLED=true the admin
# itself must take the cross-tenant path (AdminCrossTenantMiddleware) to see these rows.
pytestmark = [pytest.mark.django_db, pytest.mark.rls_raw]

SCREENS = [
    "tenancy/organization",
    "tenancy/user",
    "tenancy/membership",
    "cases/client",
    "cases/case",
    "cases/document",
    "billing/billingevent",
    "billing/usageaggregate",
    "billing/meterreport",
]


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser(email="admin@goldleaves.test", password="pw-123456789")
    client.force_login(user)
    return client


@pytest.mark.parametrize("screen", SCREENS)
def test_changelists_open_with_search_and_organization_filter(staff_client, org, screen):
    CaseFactory(organization=org, title="Searchable matter")
    response = staff_client.get(f"/admin/{screen}/?q=acme")
    assert response.status_code == 200, screen
    if screen not in ("tenancy/organization",):
        assert "organization" in response.content.decode().lower()


def test_case_changelist_shows_every_organizations_cases(staff_client, org, outsider_org):
    mine = CaseFactory(organization=org, title="Our matter")
    theirs = CaseFactory(organization=outsider_org, title="Their matter")
    body = staff_client.get("/admin/cases/case/").content.decode()
    assert mine.title in body and theirs.title in body
    filtered = staff_client.get(f"/admin/cases/case/?organization__id__exact={org.pk}")
    assert mine.title in filtered.content.decode()
    assert theirs.title not in filtered.content.decode()


def test_organization_page_has_the_memberships_inline(staff_client, org, owner):
    response = staff_client.get(f"/admin/tenancy/organization/{org.pk}/change/")
    assert response.status_code == 200
    assert owner.email in response.content.decode()


def test_anonymous_admin_redirects_to_login(client):
    response = client.get("/admin/cases/case/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
