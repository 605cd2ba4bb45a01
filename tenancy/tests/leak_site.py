"""Test-only views, middleware and URLconf for the live leak tests (never in production).

Served by gunicorn with ``DJANGO_SETTINGS_MODULE=tenancy.tests.leak_settings``:

* ``/leak/whoami/``  (bearer): the organization, what RLS lets an UNFILTERED ORM query
  see, ``current_setting('app.current_org')``. (Not billable: metering is checked on the
  real ``/api/v1/`` endpoints, through the real ``UsageMiddleware``.)
* ``/leak/boom/``    (bearer): the view raises after reading tenant rows.
* ``/leak/savepoint/`` (bearer): a savepoint sets another organization and rolls back.
* ``/leak/probe/``   (no bearer, no tenant context): backend pid, ``app.current_org``,
  ``app.cross_tenant``, ``app.rls_enabled`` and the database default it must equal,
  and how many cases a context-free query sees.
* Header ``X-Leak-Middleware-Boom: 1``: a middleware inside the tenant transaction raises.
* Every response carries ``X-Backend-Pid`` (added outside the tenant transaction).
"""

from django.db import connection, transaction
from django.http import JsonResponse
from django.urls import include, path

from cases.models import Case
from tenancy.context import request_organization
from tenancy.rls.roles import rls_database_default


def _pid_and_org():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('app.current_org', true)")
        return cursor.fetchone()


class BackendPidMiddleware:
    """Outermost: after the tenant transaction is over, report the backend pid."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response["X-Backend-Pid"] = str(_pid_and_org()[0])
        return response


class RaisingMiddleware:
    """Inside the tenant transaction (after TenantMiddleware): raises on demand."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.headers.get("X-Leak-Middleware-Boom"):
            list(Case.objects.all())
            raise RuntimeError("middleware exception (leak test)")
        return self.get_response(request)


def whoami(request):
    pid, setting = _pid_and_org()
    return JsonResponse(
        {
            "organization": str(request_organization(request).pk),
            "setting": setting,
            "pid": pid,
            # deliberately unfiltered: only row-level security keeps other firms out
            "cases": sorted(str(o) for o in Case.objects.values_list("organization_id", flat=True)),
        }
    )


def boom(request):
    list(Case.objects.all())
    raise RuntimeError("view exception (leak test)")


def savepoint(request, other):
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.current_org', %s, true)", [str(other)])
            raise ValueError("roll the savepoint back")
    except ValueError:
        pass
    pid, setting = _pid_and_org()
    return JsonResponse({"setting": setting, "pid": pid})


def probe(request):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid(), current_setting('app.current_org', true),"
            " current_setting('app.cross_tenant', true), current_setting('app.rls_enabled', true)"
        )
        pid, setting, cross_tenant, rls_enabled = cursor.fetchone()
    return JsonResponse(
        {
            "pid": pid,
            "setting": setting,
            "cross_tenant": cross_tenant,
            "rls_enabled": rls_enabled,
            "rls_enabled_default": rls_database_default(connection),
            "cases": Case.objects.count(),
        }
    )


urlpatterns = [
    path("leak/whoami/", whoami),
    path("leak/boom/", boom),
    path("leak/savepoint/<uuid:other>/", savepoint),
    path("leak/probe/", probe),
    path("", include("goldleaves.urls")),
]
