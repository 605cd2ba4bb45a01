from datetime import timedelta

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tenancy.testing import bearer_client
from tenancy.tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def bearer_client_from(access: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def obtain(email, password=PASSWORD):
    return APIClient().post(
        "/api/v1/auth/token/", {"email": email, "password": password}, format="json"
    )


def test_token_carries_the_default_organization_and_login_is_case_insensitive(owner, org):
    response = obtain("OWNER@Acme.Test")
    assert response.status_code == 200
    access = AccessToken(response.json()["access"])
    assert access["org"] == str(org.pk)
    assert access["user_id"] == str(owner.pk)


def test_token_refresh(owner, org):
    refresh = obtain(owner.email).json()["refresh"]
    response = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert response.status_code == 200
    access = AccessToken(response.json()["access"])
    assert access["org"] == str(org.pk)  # the refreshed access token still names the tenant
    assert bearer_client_from(response.json()["access"]).get("/api/v1/cases/").status_code == 200
    bad = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": "nope"}, format="json")
    assert bad.status_code == 401
    assert bad.json()["code"] == "token_not_valid"


def test_wrong_password_is_401_json(owner):
    response = obtain(owner.email, "wrong")
    assert response.status_code == 401
    assert response.json()["code"] == "no_active_account"


def test_missing_fields_are_400_with_field_errors():
    response = APIClient().post("/api/v1/auth/token/", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"email", "password"}


def test_user_without_default_organization_gets_a_membership_org(db):
    org = OrganizationFactory()
    user = UserFactory(organization=None)
    MembershipFactory(organization=org, user=user)
    access = AccessToken(obtain(user.email).json()["access"])
    assert access["org"] == str(org.pk)


def test_user_without_any_organization_is_403_on_the_api(db):
    user = UserFactory(organization=None)
    access = obtain(user.email).json()["access"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    response = client.get("/api/v1/cases/")
    assert response.status_code == 403
    assert response.json()["code"] == "organization_required"


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer a.b.c", "Bearer "])
def test_invalid_token_is_401_json(org, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/cases/")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "detail" in response.json() and "code" in response.json()


def test_expired_token_is_401(owner):
    token = AccessToken.for_user(owner)
    token["org"] = str(owner.organization_id)
    token.set_exp(lifetime=-timedelta(minutes=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get("/api/v1/cases/")
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_no_token_is_401(anon_api, org):
    response = anon_api.get("/api/v1/cases/")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_inactive_user_is_401(owner):
    client = bearer_client(owner)
    owner.is_active = False
    owner.save()
    assert client.get("/api/v1/cases/").status_code == 401


def test_x_organization_id_selects_another_membership(owner, outsider_org):
    MembershipFactory(organization=outsider_org, user=owner, role="member")
    client = bearer_client(owner)
    response = client.get(
        "/api/v1/organizations/current/", HTTP_X_ORGANIZATION_ID=str(outsider_org.pk)
    )
    assert response.status_code == 200
    assert response.json()["id"] == str(outsider_org.pk)
    assert response.json()["role"] == "member"


def test_x_organization_id_of_a_non_member_is_403_json(api, outsider_org):
    response = api.get("/api/v1/cases/", HTTP_X_ORGANIZATION_ID=str(outsider_org.pk))
    assert response.status_code == 403
    assert response.json()["code"] == "organization_forbidden"


def test_malformed_x_organization_id_is_400(api):
    response = api.get("/api/v1/cases/", HTTP_X_ORGANIZATION_ID="not-a-uuid")
    assert response.status_code == 400
    assert response.json()["code"] == "organization_invalid"


def test_token_org_claim_without_membership_is_403(owner, outsider_org):
    client = bearer_client(owner, organization=outsider_org)
    response = client.get("/api/v1/cases/")
    assert response.status_code == 403


def test_organizations_current_and_list(api, owner, org, outsider_org):
    current = api.get("/api/v1/organizations/current/")
    assert current.status_code == 200
    assert current.json()["id"] == str(org.pk)
    assert current.json()["role"] == "owner"
    assert current.json()["plan_tier"] == org.plan_tier
    listing = api.get("/api/v1/organizations/")
    assert listing.status_code == 200
    ids = [m["organization"]["id"] for m in listing.json()["results"]]
    assert ids == [str(org.pk)]


def test_organizations_endpoints_never_show_another_organization(outsider_api, org):
    current = outsider_api.get("/api/v1/organizations/current/")
    assert current.json()["id"] != str(org.pk)
    listing = outsider_api.get("/api/v1/organizations/")
    assert str(org.pk) not in str(listing.json())


def test_organizations_endpoints_need_a_token(anon_api):
    assert anon_api.get("/api/v1/organizations/").status_code == 401
    assert anon_api.get("/api/v1/organizations/current/").status_code == 401


def expired_access_token(user) -> str:
    token = AccessToken.for_user(user)
    token["org"] = str(user.organization_id)
    token.set_exp(lifetime=-timedelta(minutes=1))
    return str(token)


@pytest.mark.parametrize("header", ["expired", "Bearer garbage"])
def test_token_endpoints_ignore_a_stale_bearer_header(owner, org, header):
    """Clients refresh with their expired access token still in the header: the token
    endpoints need no access token, so the middleware lets them through untouched."""
    refresh = obtain(owner.email).json()["refresh"]
    client = APIClient()
    value = f"Bearer {expired_access_token(owner)}" if header == "expired" else header
    client.credentials(HTTP_AUTHORIZATION=value)
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert refreshed.status_code == 200, refreshed.content
    assert AccessToken(refreshed.json()["access"])["org"] == str(org.pk)
    obtained = client.post(
        "/api/v1/auth/token/", {"email": owner.email, "password": PASSWORD}, format="json"
    )
    assert obtained.status_code == 200, obtained.content
    # the same stale header on any other endpoint is still a 401
    assert client.get("/api/v1/organizations/current/").status_code == 401


def test_drf_reuses_the_middlewares_token_validation(api, monkeypatch):
    """The bearer token is validated once per request: by TenantMiddleware; DRF's
    TenantJWTAuthentication takes the middleware's (user, token) result."""
    from rest_framework_simplejwt.authentication import JWTAuthentication

    validated_by = []
    real = JWTAuthentication.get_validated_token

    def spy(self, raw_token):
        validated_by.append(type(self).__name__)
        return real(self, raw_token)

    monkeypatch.setattr(JWTAuthentication, "get_validated_token", spy)
    assert api.get("/api/v1/cases/").status_code == 200
    # once: by the middleware's instance (the middleware also uses TenantJWTAuthentication,
    # for the revocation check); DRF's instance takes the middleware's result
    assert validated_by == ["TenantJWTAuthentication"]
    validated_by.clear()
    created = api.post("/api/v1/clients/", {"name": "Spy Client"}, format="json")
    assert created.status_code == 201
    assert validated_by == ["TenantJWTAuthentication"]
