"""The tenant API base classes (``tenancy.viewsets``): what a subclass may define, the
queryset scoping it gets, the organization check and the serializer context.

Views are called through ``APIRequestFactory`` with ``request.organization`` set as
``TenantMiddleware`` sets it; the test body runs in ``cross_tenant`` (root conftest), so
row-level security admits every organization's rows and only the base class's own
filter keeps the other organization's rows out.
"""

import pytest
from django.test import RequestFactory
from rest_framework import generics
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate

from cases.apis import CaseViewSet
from cases.models import Client
from cases.serializers import CaseSerializer
from cases.tests.factories import CaseFactory, ClientFactory
from tenancy.context import request_organization
from tenancy.models import Membership
from tenancy.permissions import MembersOnly
from tenancy.testing import bearer_client
from tenancy.viewsets import TenantAPIMixin

# --- what a subclass may define (checked when the class is created) ----------------------


def test_a_subclass_defining_get_queryset_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="defines get_queryset"):

        class _Unscoped(TenantAPIMixin, generics.ListAPIView):
            def get_queryset(self):
                return Client.objects.all()


def test_a_subclass_with_a_queryset_attribute_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="defines queryset"):

        class _Unscoped(TenantAPIMixin, generics.ListAPIView):
            queryset = Client.objects.all()


def test_a_subclass_of_a_tenant_view_is_checked_too():
    with pytest.raises(TypeError, match="defines get_queryset"):

        class _Unscoped(CaseViewSet):
            def get_queryset(self):
                return super().get_queryset()


def test_a_view_cannot_be_both_scoped_and_cross_organization():
    with pytest.raises(TypeError, match="both tenant_queryset"):

        class _Both(TenantAPIMixin, generics.ListAPIView):
            def tenant_queryset(self, organization):
                return Client.objects.for_organization(organization)

            def dangerously_get_queryset(self):
                return Client.objects.all()


def test_a_view_with_only_the_hook_is_accepted():
    class _Scoped(TenantAPIMixin, generics.ListAPIView):
        def tenant_queryset(self, organization):
            return Client.objects.for_organization(organization)

    assert "get_queryset" not in _Scoped.__dict__


# --- scoping -----------------------------------------------------------------------------


class _ClientIds(TenantAPIMixin, generics.ListAPIView):
    """Lists client ids from a hook that FORGETS the organization filter."""

    model = Client
    permission_classes = [IsAuthenticated, MembersOnly]
    filter_backends: list = []
    pagination_class = None

    def tenant_queryset(self, organization):
        return Client.objects.all()  # the bug the base class's own filter exists for

    def list(self, request, *args, **kwargs):
        return Response(sorted(str(pk) for pk in self.get_queryset().values_list("pk", flat=True)))


class _OwnMemberships(TenantAPIMixin, generics.ListAPIView):
    model = Membership
    permission_classes = [IsAuthenticated, MembersOnly]
    filter_backends: list = []
    pagination_class = None

    def dangerously_get_queryset(self):
        return Membership.objects.filter(user=self.request.user)

    def list(self, request, *args, **kwargs):
        ids = self.get_queryset().values_list("organization_id", flat=True)
        return Response(sorted(str(pk) for pk in ids))


def _call(view_class, user, organization, path="/"):
    request = APIRequestFactory().get(path)
    if user is not None:
        force_authenticate(request, user=user)
    request.organization = organization  # as TenantMiddleware sets them
    request.membership = (
        Membership.objects.filter(user=user, organization=organization).first()
        if user is not None and organization is not None
        else None
    )
    return view_class.as_view()(request)


class _NoRoleRule(TenantAPIMixin, generics.ListAPIView):
    """A tenant view that names no role rule (no RolePermission)."""

    model = Client

    def tenant_queryset(self, organization):
        return Client.objects.for_organization(organization)


def test_a_view_without_a_role_rule_refuses_everyone(org, owner):
    response = _call(_NoRoleRule, owner, org)
    assert response.status_code == 403
    assert response.data["code"] == "role_forbidden"


def test_the_base_class_filters_the_hook_by_the_requests_organization(org, outsider_org, owner):
    ours, theirs = ClientFactory(organization=org), ClientFactory(organization=outsider_org)
    assert Client.objects.filter(pk__in=[ours.pk, theirs.pk]).count() == 2  # both visible here
    response = _call(_ClientIds, owner, org)
    assert response.status_code == 200
    assert response.data == [str(ours.pk)]


def test_the_escape_hatch_is_not_filtered_by_organization(org, outsider_org, owner):
    Membership.objects.create(organization=outsider_org, user=owner, role="member")
    response = _call(_OwnMemberships, owner, org)
    assert response.status_code == 200
    assert response.data == sorted([str(org.pk), str(outsider_org.pk)])


def test_the_membership_list_spans_every_organization_of_the_caller(org, outsider_org, owner):
    """``GET /organizations/`` is cross-organization on purpose (the escape hatch): a member
    of two organizations sees both, whichever one the request is for."""
    Membership.objects.create(organization=outsider_org, user=owner, role="member")
    response = bearer_client(owner).get("/api/v1/organizations/")
    assert response.status_code == 200
    ids = sorted(m["organization"]["id"] for m in response.json()["results"])
    assert ids == sorted([str(org.pk), str(outsider_org.pk)])


# --- the organization check, after authentication ----------------------------------------


def test_an_authenticated_request_without_an_organization_is_403_organization_required(owner):
    response = _call(_ClientIds, owner, None)
    assert response.status_code == 403
    assert response.data["code"] == "organization_required"


def test_an_unauthenticated_request_is_401_before_the_organization_check(db):
    response = _call(_ClientIds, None, None)
    assert response.status_code == 401


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
