"""``GET /health/``: liveness of the API, its database and Redis. No authentication."""

from django.db import DatabaseError, connection
from django.http import JsonResponse

from tenancy.ratelimit import redis_state


def health(request):
    """200 ``{"status": "ok", "database": "ok", "redis": ...}`` when PostgreSQL answers
    ``SELECT 1``; 503 with ``"database": "unavailable"`` otherwise.

    ``redis`` is ``"ok"``, ``"unavailable"`` or ``"not configured"`` (no ``REDIS_URL``).
    Redis never makes this a 5xx: without it rate limits fail open and the API serves.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        database = "ok"
    except DatabaseError:
        database = "unavailable"
    ok = database == "ok"
    return JsonResponse(
        {"status": "ok" if ok else "degraded", "database": database, "redis": redis_state()},
        status=200 if ok else 503,
    )
