"""Test-only URLconf without the token endpoints (``token-obtain``, ``token-refresh``) and
without the admin: one view that answers with the request's organization."""

from django.http import JsonResponse
from django.urls import path

from tenancy.context import request_organization


def organization_view(request):
    organization = request_organization(request)
    return JsonResponse({"organization": str(organization.pk) if organization else None})


urlpatterns = [path("whoami/", organization_view)]
