"""``GET /health/`` (``goldleaves.health``)."""

import pytest
from django.db import connection


@pytest.mark.django_db
def test_health_ok(client):
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_health_503_when_the_database_does_not_answer(client, monkeypatch):
    # Point the connection at a port where nothing listens, for this request only.
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "HOST", "127.0.0.1")
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    try:
        response = client.get("/health/")
    finally:
        connection.close()
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["database"] == "unavailable"
