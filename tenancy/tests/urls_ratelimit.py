"""Test-only URLs: the project's URLs plus two tenant API views that a permission refuses
(one at view level, one at object level), to test that refused requests are counted."""

from django.urls import include, path
from rest_framework import generics
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from tenancy.models import Membership
from tenancy.viewsets import TenantAPIMixin


class _DenyAll(BasePermission):
    def has_permission(self, request, view):
        return False


class DeniedApi(TenantAPIMixin, APIView):
    permission_classes = [IsAuthenticated, _DenyAll]

    def get(self, request):  # never reached
        return Response({})


class _DenyEveryObject(BasePermission):
    def has_object_permission(self, request, view, obj):
        return False


class ObjectDeniedApi(TenantAPIMixin, generics.RetrieveAPIView):
    """Passes the view-level permissions; ``get_object`` refuses the object (DRF's
    ``check_object_permissions`` -> ``permission_denied``)."""

    permission_classes = [IsAuthenticated, _DenyEveryObject]
    model = Membership

    def tenant_queryset(self, organization):
        return Membership.objects.for_organization(organization)

    def retrieve(self, request, *args, **kwargs):  # get_object raises before the body
        self.get_object()
        return Response({})


urlpatterns = [
    path("api/v1/test-denied/", DeniedApi.as_view()),
    path("api/v1/test-denied-object/<int:pk>/", ObjectDeniedApi.as_view()),
    path("", include("goldleaves.urls")),
]
