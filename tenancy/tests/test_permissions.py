"""The rule for an organization named in a URL (``tenancy.permissions``): a member of it,
or staff; anyone else gets the same 404 as for an id that does not exist.

The endpoints that use it (``/billing/usage-summary/<id>/``, ``/billing/usage-report/<id>/``)
are tested end to end in ``billing/tests/test_apis.py``; here the rule itself and the DRF
permission class, on a view of their own.
"""

import uuid

import pytest
from rest_framework import exceptions
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from tenancy.models import Membership
from tenancy.permissions import (
    AdminsOnly,
    IsMemberOfTargetOrganization,
    MembersOnly,
    readable_organization,
)
from tenancy.tests.factories import UserFactory, member_of
from tenancy.viewsets import TenantAPIMixin


def test_a_member_reads_the_organization(org, owner):
    assert readable_organization(user=owner, organization_id=org.pk) == org


def test_a_member_of_another_organization_gets_404(org, outsider):
    with pytest.raises(exceptions.NotFound):
        readable_organization(user=outsider, organization_id=org.pk)


def test_an_unknown_organization_is_the_same_404(owner):
    with pytest.raises(exceptions.NotFound):
        readable_organization(user=owner, organization_id=uuid.uuid4())


def test_staff_read_any_organization(org, outsider_org):
    staff = member_of(outsider_org, email="staff@example.test", is_staff=True)
    assert readable_organization(user=staff, organization_id=org.pk) == org


def test_an_inactive_member_gets_404(org):
    user = UserFactory(organization=org, is_active=False)
    Membership.objects.create(organization=org, user=user, role="owner")
    with pytest.raises(exceptions.NotFound):
        readable_organization(user=user, organization_id=org.pk)


class _TargetApi(TenantAPIMixin, APIView):
    permission_classes = [IsAuthenticated, IsMemberOfTargetOrganization, MembersOnly]

    def get(self, request, organization_id):
        return Response({"target": str(self.target_organization.pk)})


def _get(user, request_organization, target_id):
    request = APIRequestFactory().get(f"/target/{target_id}/")
    if user is not None:
        force_authenticate(request, user=user)
    request.organization = request_organization  # as TenantMiddleware sets it
    return _TargetApi.as_view()(request, organization_id=target_id)


def test_the_permission_admits_a_member_of_the_target_and_hands_it_to_the_view(
    org, outsider_org, owner
):
    Membership.objects.create(organization=outsider_org, user=owner, role="member")
    response = _get(owner, org, outsider_org.pk)  # request for org, target the other one
    assert response.status_code == 200
    assert response.data == {"target": str(outsider_org.pk)}


def test_the_permission_answers_404_not_403_to_a_non_member(org, outsider_org, outsider):
    refused = _get(outsider, outsider_org, org.pk)
    missing = _get(outsider, outsider_org, uuid.uuid4())
    assert (refused.status_code, missing.status_code) == (404, 404)
    assert refused.data == missing.data


def test_an_anonymous_request_is_still_401(org):
    assert _get(None, None, org.pk).status_code == 401


class _TargetAdminApi(_TargetApi):
    permission_classes = [IsAuthenticated, IsMemberOfTargetOrganization, AdminsOnly]


def test_the_role_checked_is_the_role_in_the_target_organization(org, outsider_org, owner):
    """``owner`` owns ``org`` but is only a member of the organization in the URL."""
    Membership.objects.create(organization=outsider_org, user=owner, role="member")
    request = APIRequestFactory().get(f"/target/{outsider_org.pk}/")
    force_authenticate(request, user=owner)
    request.organization = org
    request.membership = Membership.objects.get(organization=org, user=owner)
    refused = _TargetAdminApi.as_view()(request, organization_id=outsider_org.pk)
    assert refused.status_code == 403
    assert refused.data["code"] == "role_forbidden"
    Membership.objects.filter(organization=outsider_org, user=owner).update(role="admin")
    request = APIRequestFactory().get(f"/target/{outsider_org.pk}/")
    force_authenticate(request, user=owner)
    request.organization = org
    admitted = _TargetAdminApi.as_view()(request, organization_id=outsider_org.pk)
    assert admitted.status_code == 200
