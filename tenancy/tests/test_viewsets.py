"""The tenant API base classes (``tenancy.viewsets``): the serializer context.

Views are called through ``APIRequestFactory`` with ``request.organization`` set as
``TenantMiddleware`` sets it; the test body runs in ``cross_tenant`` (root conftest), so
row-level security admits every organization's rows and only the base class's own
filter keeps the other organization's rows out.
"""

from django.test import RequestFactory
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from cases.apis import CaseViewSet
from cases.serializers import CaseSerializer
from cases.tests.factories import CaseFactory, ClientFactory
from tenancy.context import request_organization

# --- the organization reaches serializers through the serializer context -----------------


def test_tenant_views_put_the_requests_organization_in_the_serializer_context(org, owner):
    request = APIRequestFactory().post("/api/v1/cases/")
    request.organization = org
    view = CaseViewSet(action="create", request=Request(request), format_kwarg=None)
    context = view.get_serializer_context()
    assert context["organization"] == org
    assert view.get_serializer().context["organization"] == org


def _case_data(client, reference="CTX-1"):
    return {"client": str(client.pk), "title": "Matter", "reference_number": reference}


def test_related_ids_resolve_in_the_context_organization_only(org, outsider_org):
    ours, theirs = ClientFactory(organization=org), ClientFactory(organization=outsider_org)
    assert CaseSerializer(data=_case_data(ours), context={"organization": org}).is_valid()
    foreign = CaseSerializer(data=_case_data(theirs), context={"organization": org})
    assert not foreign.is_valid()
    assert foreign.errors["client"][0].code == "does_not_exist"
    # no organization in the context: no id is accepted
    orphan = CaseSerializer(data=_case_data(ours), context={})
    assert not orphan.is_valid()
    assert orphan.errors["client"][0].code == "does_not_exist"


def test_reference_uniqueness_is_checked_in_the_context_organization(org, outsider_org):
    CaseFactory(organization=outsider_org, reference_number="CTX-1")
    client = ClientFactory(organization=org)
    assert CaseSerializer(data=_case_data(client), context={"organization": org}).is_valid()
    CaseFactory(organization=org, client=client, reference_number="CTX-1")
    clash = CaseSerializer(data=_case_data(client), context={"organization": org})
    assert not clash.is_valid()
    assert "reference_number" in clash.errors


# --- the one accessor ----------------------------------------------------------------------


def test_request_organization_reads_django_and_drf_requests(org):
    django_request = RequestFactory().get("/")
    assert request_organization(django_request) is None
    assert request_organization(Request(django_request)) is None
    django_request.organization = org
    assert request_organization(django_request) == org
    assert request_organization(Request(django_request)) == org
