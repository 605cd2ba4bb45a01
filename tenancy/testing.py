"""Test helpers that need tenancy: real access tokens and API clients that send them.

Importable from any test module (``from tenancy.testing import bearer_client``); the
fixtures in the root ``conftest.py`` are built on them.
"""

from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tenancy.serializers import OrganizationTokenObtainPairSerializer


def access_token(user, organization=None) -> AccessToken:
    """A real simplejwt access token for ``user``, made as the token endpoint makes it
    (``OrganizationTokenObtainPairSerializer``); with ``organization``, its ``org`` claim
    names that organization (a UUID string) instead of the user's default one."""
    token = OrganizationTokenObtainPairSerializer.get_token(user).access_token
    if organization is not None:
        token["org"] = str(organization.pk)
    assert isinstance(token, AccessToken)
    return token


def bearer_client(user, organization=None) -> APIClient:
    """An ``APIClient`` that sends ``Authorization: Bearer <access_token(user, organization)>``
    on every request."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(user, organization)}")
    return client


def with_rate_limits(plans: dict, limits: dict) -> dict:
    """A copy of ``plans`` (a ``BILLING_PLANS`` value) whose plans' ``rate_limit`` are
    ``limits[tier]`` (``{tier: {scope: requests per minute}}``); a tier not in ``limits``
    gets ``{}`` (unlimited). For tests: ``settings.BILLING_PLANS = with_rate_limits(...)``."""
    return {tier: {**plan, "rate_limit": limits.get(tier, {})} for tier, plan in plans.items()}
