"""``GET /health/``: liveness of the API and its database. No authentication."""

from django.db import DatabaseError, connection
from django.http import JsonResponse


def health(request):
    """200 ``{"status": "ok", "database": "ok"}`` when PostgreSQL answers ``SELECT 1``;
    503 with ``"database": "unavailable"`` otherwise."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        database = "ok"
    except DatabaseError:
        database = "unavailable"
    ok = database == "ok"
    return JsonResponse(
        {"status": "ok" if ok else "degraded", "database": database},
        status=200 if ok else 503,
    )
