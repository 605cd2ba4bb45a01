"""Test-only URLs: the project's URLs plus views that answer with a chosen status
inside the tenant context (to test which statuses are billed)."""

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import JsonResponse
from django.urls import include, path

from cases.models import Case, Client
from tenancy.context import request_organization


def status_view(request, code: int):
    return JsonResponse({"detail": "test", "code": str(code)}, status=code)


def savepoint_error_view(request):
    """Writes a client and a case (reference ``SP-1``), then tries a second case with the
    same reference inside a savepoint: PostgreSQL raises a real unique violation
    (``cases_case_org_reference_unique``, SQLSTATE 23505), which puts the transaction in
    the failed state until the savepoint is rolled back; answers 400 with the SQLSTATE,
    so the test can tell a real database error from a Python-raised one."""
    organization = request_organization(request)
    client = Client.objects.create(organization=organization, name="kept")
    Case.objects.create(
        organization=organization, client=client, title="first", reference_number="SP-1"
    )
    try:
        with transaction.atomic():
            Case.objects.create(
                organization=organization,
                client=client,
                title="duplicate",
                reference_number="SP-1",
            )
    except IntegrityError as exc:
        sqlstate = getattr(exc.__cause__, "sqlstate", None)
        return JsonResponse(
            {"detail": "duplicate reference", "code": "duplicate", "sqlstate": sqlstate},
            status=400,
        )
    return JsonResponse({"detail": "no error", "code": "unexpected"}, status=200)


def aborted_transaction_view(request):
    """Writes a client, then swallows a real database error raised WITHOUT a savepoint
    (the bug this view stands for) and answers 200 on the aborted transaction."""
    Client.objects.create(organization=request_organization(request), name="lost")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except DatabaseError:
        pass
    return JsonResponse({"detail": "looks fine", "code": "ok"}, status=200)


urlpatterns = [
    path("api/v1/test-status/<int:code>/", status_view),
    path("api/v1/test-savepoint/", savepoint_error_view),
    path("api/v1/test-aborted/", aborted_transaction_view),
    path("", include("goldleaves.urls")),
]
