"""Organization endpoints: the active organization and the caller's memberships."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from tenancy.selectors import memberships_for_user
from tenancy.serializers import CurrentOrganizationSerializer, MembershipSerializer
from tenancy.viewsets import TenantAPIMixin


class CurrentOrganizationApi(TenantAPIMixin, APIView):
    """``GET /api/v1/organizations/current/``: the active organization and the caller's role."""

    @extend_schema(responses=CurrentOrganizationSerializer)
    def get(self, request):
        organization = request.organization
        data = CurrentOrganizationSerializer(organization).data
        data["role"] = request.membership.role
        return Response(data)


class MembershipListApi(TenantAPIMixin, generics.ListAPIView):
    """``GET /api/v1/organizations/``: the caller's memberships (one per organization)."""

    serializer_class = MembershipSerializer
    filter_backends: list = []

    def get_queryset(self):
        return memberships_for_user(user=self.request.user)
