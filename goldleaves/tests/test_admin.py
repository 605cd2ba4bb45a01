"""Every admin screen opens for staff, with organization filters and search, under RLS too."""

import pytest
from django.utils import timezone

from cases.tests.factories import CaseFactory
from tenancy.context import tenant_context
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


def _in(organization, factory, **fields):
    """Create a tenant row inside its organization's context (RLS is on in rls_raw tests)."""
    with tenant_context(organization):
        return factory(organization=organization, **fields)


def _two_rows(screen, org, outsider_org, owner, outsider):
    """``(query, ours, theirs)``: one row in ``org`` that the search ``query`` matches,
    one in ``outsider_org`` that it does not."""
    from billing.models import MeterReport, UsageAggregate
    from billing.tests.factories import BillingEventFactory
    from cases.models import Document
    from cases.tests.factories import ClientFactory

    now = timezone.now()
    if screen == "tenancy/organization":
        return "acme", org, outsider_org
    if screen == "tenancy/user":
        return "acme", owner, outsider
    if screen == "tenancy/membership":
        with tenant_context(org):
            ours = owner.memberships.get()
        with tenant_context(outsider_org):
            theirs = outsider.memberships.get()
        return "acme", ours, theirs
    if screen == "cases/client":
        return ("roe", _in(org, ClientFactory, name="Jane Roe"), _in(outsider_org, ClientFactory))
    if screen == "cases/case":
        return (
            "acme matter",
            _in(org, CaseFactory, title="Acme matter"),
            _in(outsider_org, CaseFactory, title="Other matter"),
        )
    if screen == "cases/document":

        def document(organization, filename):
            case = _in(organization, CaseFactory)
            return _in(
                organization,
                Document.objects.create,
                case=case,
                file=f"documents/{organization.pk}/{filename}",
                original_filename=filename,
            )

        return "acme-brief", document(org, "acme-brief.txt"), document(outsider_org, "other.txt")
    if screen == "billing/billingevent":
        return (
            "acme-req",
            _in(org, BillingEventFactory, request_id="acme-req-1"),
            _in(outsider_org, BillingEventFactory, request_id="other-req-1"),
        )
    if screen == "billing/usageaggregate":

        def aggregate(organization):
            return _in(
                organization,
                UsageAggregate.objects.create,
                event_name="api.request",
                meter_event_name="api_requests",
                period_start=now.replace(minute=0, second=0, microsecond=0),
                value=1,
                identifier=f"agg-{organization.pk}",
            )

        return "acme-law", aggregate(org), aggregate(outsider_org)
    if screen == "billing/meterreport":

        def report(organization):
            return _in(organization, MeterReport.objects.create, until=now)

        return "acme-law", report(org), report(outsider_org)
    raise AssertionError(f"no rows for {screen}")


def _filter_field(entry) -> str:
    """The field a ``list_filter`` entry filters on: ``"organization"``,
    ``("organization", SomeFilter)``, or a ``SimpleListFilter`` class."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, (tuple, list)):
        return entry[0]
    return getattr(entry, "parameter_name", "")


def _pks(response):
    return {row.pk for row in response.context["cl"].result_list}


@pytest.mark.parametrize("screen", SCREENS)
def test_changelists_search_narrows_and_filter_by_organization(
    staff_client, org, outsider_org, owner, outsider, screen
):
    query, ours, theirs = _two_rows(screen, org, outsider_org, owner, outsider)
    response = staff_client.get(f"/admin/{screen}/")
    assert response.status_code == 200, screen
    cl = response.context["cl"]
    assert cl.search_fields, f"{screen}: no search"
    assert {ours.pk, theirs.pk} <= _pks(response)  # staff see every organization's rows

    searched = staff_client.get(f"/admin/{screen}/", {"q": query})
    assert searched.status_code == 200
    assert _pks(searched) == {ours.pk}, f"{screen}: ?q={query} does not narrow the rows"

    if screen == "tenancy/organization":
        return  # organizations are not filtered by organization
    assert any(
        _filter_field(entry) == "organization" or _filter_field(entry).startswith("organization__")
        for entry in cl.list_filter
    ), f"{screen}: no organization filter"
    filtered = staff_client.get(f"/admin/{screen}/", {"organization__id__exact": str(org.pk)})
    assert filtered.status_code == 200
    assert ours.pk in _pks(filtered) and theirs.pk not in _pks(filtered)


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
