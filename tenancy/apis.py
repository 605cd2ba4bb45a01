"""Organization endpoints: the active organization and the caller's memberships."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from tenancy.models import Membership
from tenancy.selectors import memberships_for_user
from tenancy.serializers import CurrentOrganizationSerializer, MembershipSerializer
from tenancy.viewsets import TenantAPIMixin


class CurrentOrganizationApi(TenantAPIMixin, APIView):
    """``GET /api/v1/organizations/current/``: the active organization and the caller's role."""

    @extend_schema(responses=CurrentOrganizationSerializer)
    def get(self, request):
        data = CurrentOrganizationSerializer(self.organization).data
        data["role"] = self.membership.role
        return Response(data)


class MembershipListApi(TenantAPIMixin, generics.ListAPIView):
    """``GET /api/v1/organizations/``: the caller's memberships (one per organization)."""

    model = Membership
    serializer_class = MembershipSerializer
    filter_backends: list = []

    def dangerously_get_queryset(self):
        """The caller's memberships in every organization (``memberships_for_user``):
        cross-organization on purpose, the list spans every organization the caller
        belongs to, not only the request's. Row-level security admits these rows through
        the user's own ``app.current_user`` (``tenancy.rls``)."""
        return memberships_for_user(user=self.request.user)
