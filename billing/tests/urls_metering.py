"""Test-only URLs: the project's URLs plus views that answer with a chosen status
inside the tenant context (to test which statuses are billed)."""

from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.urls import include, path

from cases.models import Client


def status_view(request, code: int):
    return JsonResponse({"detail": "test", "code": str(code)}, status=code)


def savepoint_error_view(request):
    """Writes a client, then fails a second write inside a savepoint and answers 409."""
    Client.objects.create(organization=request.organization, name="kept")
    try:
        with transaction.atomic():
            Client.objects.create(organization=request.organization, name="dropped")
            raise IntegrityError("simulated constraint failure")
    except IntegrityError:
        pass
    return JsonResponse({"detail": "conflict", "code": "conflict"}, status=409)


urlpatterns = [
    path("api/v1/test-status/<int:code>/", status_view),
    path("api/v1/test-savepoint/", savepoint_error_view),
    path("", include("goldleaves.urls")),
]
