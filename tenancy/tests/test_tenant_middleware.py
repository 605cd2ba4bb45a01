"""``TenantMiddleware`` and ``AdminCrossTenantMiddleware`` under a URLconf that lacks the
URL names they look up: they degrade (no exemption, no admin path), never a 500."""

import logging

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tenancy.testing import bearer_client

pytestmark = pytest.mark.django_db

URLCONF = "tenancy.tests.urls_without_token_endpoints"


@override_settings(ROOT_URLCONF=URLCONF)
def test_bearer_requests_work_without_token_endpoints_in_the_urlconf(owner, org, caplog):
    """``reverse("token-obtain")`` raises ``NoReverseMatch`` here: that used to make
    every bearer request a 500. Now there is simply no token endpoint to exempt."""
    client = bearer_client(owner)  # a new client: its handler loads fresh middleware
    with caplog.at_level(logging.WARNING, logger="tenancy.middleware"):
        responses = [client.get("/whoami/") for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200], responses[0].content
    assert responses[1].json() == {"organization": str(org.pk)}
    warnings = [r for r in caplog.records if r.name == "tenancy.middleware"]
    token_warnings = [r for r in warnings if "token-obtain, token-refresh" in r.getMessage()]
    assert len(token_warnings) == 1  # once, not per request
    assert any("admin:index" in r.getMessage() for r in warnings)


@override_settings(ROOT_URLCONF=URLCONF)
def test_a_bad_bearer_token_is_still_a_401_without_token_endpoints(org):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer garbage")
    response = client.get("/whoami/")
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


@override_settings(ROOT_URLCONF=URLCONF)
def test_requests_without_a_token_pass_through_without_the_admin_in_the_urlconf(client):
    response = client.get("/whoami/")
    assert response.status_code == 200
    assert response.json() == {"organization": None}
