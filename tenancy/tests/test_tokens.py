"""Token revocation: rotation, logout, password change, deactivation, deletion and
membership removal (``tenancy.tokens``, ``User.save``, ``tenancy.signals``)."""

import pytest
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken as PlainAccessToken

from tenancy.models import Membership, User
from tenancy.tests.factories import PASSWORD, MembershipFactory, member_of

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-new-and-longer-passphrase"


def obtain(email, password=PASSWORD) -> dict:
    response = APIClient().post(
        "/api/v1/auth/token/", {"email": email, "password": password}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def refresh(token: str):
    return APIClient().post("/api/v1/auth/token/refresh/", {"refresh": token}, format="json")


def get_current(access: str, **extra):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get("/api/v1/organizations/current/", **extra)


def live_refresh_tokens(user) -> int:
    return OutstandingToken.objects.filter(user=user, blacklistedtoken__isnull=True).count()


def test_refresh_rotates_and_each_refresh_token_is_single_use(owner):
    pair = obtain(owner.email)
    first = refresh(pair["refresh"])
    assert first.status_code == 200
    assert set(first.json()) == {"access", "refresh"}
    assert first.json()["refresh"] != pair["refresh"]
    again = refresh(pair["refresh"])  # the rotated-away token is blacklisted
    assert again.status_code == 401
    assert again.json()["code"] == "token_not_valid"
    assert refresh(first.json()["refresh"]).status_code == 200
    assert get_current(first.json()["access"]).status_code == 200


def test_a_password_change_revokes_earlier_access_and_refresh_tokens(owner):
    pair = obtain(owner.email)
    assert get_current(pair["access"]).status_code == 200
    owner.set_password(NEW_PASSWORD)
    owner.save()
    owner.refresh_from_db()
    assert owner.tokens_valid_after is not None
    response = get_current(pair["access"])
    assert response.status_code == 401
    assert response.json() == {
        "detail": "Token was issued before the user's password change or deactivation.",
        "code": "token_revoked",
    }
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_not_valid"  # blacklisted by the change
    assert live_refresh_tokens(owner) == 0
    # tokens issued right after the change (same second) work
    fresh = obtain(owner.email, NEW_PASSWORD)
    assert get_current(fresh["access"]).status_code == 200
    assert refresh(fresh["refresh"]).status_code == 200


def test_an_access_token_with_whole_second_iat_is_compared_too(owner):
    """Tokens made by simplejwt's own classes carry an integer iat: still refused."""
    token = PlainAccessToken.for_user(owner)
    token["org"] = str(owner.organization_id)
    owner.set_password(NEW_PASSWORD)
    owner.save()
    assert get_current(str(token)).json()["code"] == "token_revoked"


def test_the_refresh_token_of_a_password_change_is_refused_even_if_not_blacklisted(owner):
    """tokens_valid_after alone refuses it (e.g. a token never recorded as outstanding)."""
    pair = obtain(owner.email)
    owner.set_password(NEW_PASSWORD)
    owner.save()
    BlacklistedToken.objects.all().delete()
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_revoked"


def test_the_admin_password_form_revokes_tokens(owner):
    pair = obtain(owner.email)
    staff = User.objects.create_superuser("staff@example.test", "staff-password-123")
    browser = Client()
    browser.force_login(staff)
    response = browser.post(
        f"/admin/tenancy/user/{owner.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert get_current(pair["access"]).json()["code"] == "token_revoked"
    assert refresh(pair["refresh"]).status_code == 401


def test_the_changepassword_command_revokes_tokens(owner, monkeypatch):
    pair = obtain(owner.email)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": NEW_PASSWORD)
    call_command("changepassword", owner.email, stdout=open("/dev/null", "w"))
    assert get_current(pair["access"]).json()["code"] == "token_revoked"
    assert refresh(pair["refresh"]).status_code == 401


def test_a_password_hash_upgrade_at_login_revokes_nothing(owner, settings):
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
    pair = obtain(owner.email)
    User.objects.filter(pk=owner.pk).update(
        password=make_password(PASSWORD, hasher="pbkdf2_sha256")
    )
    obtain(owner.email)  # the login upgrades the hash to MD5 (the preferred hasher)
    owner.refresh_from_db()
    assert owner.password.startswith("md5$")
    assert owner.tokens_valid_after is None  # never revoked
    assert get_current(pair["access"]).status_code == 200
    assert refresh(pair["refresh"]).status_code == 200


def test_deactivation_revokes_and_reactivation_does_not_revive(owner):
    pair = obtain(owner.email)
    owner.is_active = False
    owner.save()
    assert get_current(pair["access"]).status_code == 401
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_not_valid"
    assert live_refresh_tokens(owner) == 0
    owner.is_active = True
    owner.save()
    assert get_current(pair["access"]).json()["code"] == "token_revoked"
    assert refresh(pair["refresh"]).status_code == 401


def test_refresh_of_a_deactivated_user_is_401_json_even_unblacklisted(owner):
    pair = obtain(owner.email)
    User.objects.filter(pk=owner.pk).update(is_active=False)  # no save(): no revocation
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == "no_active_account"


@pytest.mark.parametrize("blacklisted", [True, False])
def test_refresh_of_a_deleted_user_is_401_json(owner, blacklisted):
    pair = obtain(owner.email)
    owner_id = owner.pk
    jtis = list(OutstandingToken.objects.filter(user=owner).values_list("jti", flat=True))
    owner.delete()
    assert not OutstandingToken.objects.filter(user_id=owner_id).exists()  # SET_NULL
    revoked = BlacklistedToken.objects.filter(token__jti__in=jtis)
    assert revoked.count() == len(jtis) == 1  # revoked before the delete
    if not blacklisted:
        revoked.delete()
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == ("token_not_valid" if blacklisted else "no_active_account")
    gone = get_current(pair["access"])  # simplejwt: "User not found"
    assert gone.status_code == 401
    assert gone.json()["code"]


def test_a_membership_removal_refuses_its_access_tokens_and_revokes_refresh_tokens(
    owner, org, outsider_org
):
    MembershipFactory(organization=outsider_org, user=owner, role="member")
    pair = obtain(owner.email)
    header = {"HTTP_X_ORGANIZATION_ID": str(outsider_org.pk)}
    assert get_current(pair["access"], **header).status_code == 200
    Membership.objects.filter(organization=outsider_org, user=owner).delete()
    response = get_current(pair["access"], **header)
    assert response.status_code == 403
    assert response.json()["code"] == "organization_forbidden"
    assert get_current(pair["access"]).status_code == 200  # the remaining membership
    assert refresh(pair["refresh"]).status_code == 401
    assert live_refresh_tokens(owner) == 0


def test_revocation_touches_only_that_user(owner, org):
    other = member_of(org, email="colleague@acme.test")
    mine, theirs = obtain(owner.email), obtain(other.email)
    owner.set_password(NEW_PASSWORD)
    owner.save()
    assert get_current(theirs["access"]).status_code == 200
    assert refresh(theirs["refresh"]).status_code == 200
    assert refresh(mine["refresh"]).status_code == 401


def test_logout_blacklists_the_refresh_token(owner):
    pair = obtain(owner.email)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer expired-or-garbage")  # ignored
    response = client.post("/api/v1/auth/logout/", {"refresh": pair["refresh"]}, format="json")
    assert response.status_code == 204
    assert response.content == b""
    refused = refresh(pair["refresh"])
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_not_valid"
    twice = client.post("/api/v1/auth/logout/", {"refresh": pair["refresh"]}, format="json")
    assert twice.status_code == 401


@pytest.mark.parametrize(
    "body, status, code",
    [({"refresh": "garbage"}, 401, "token_not_valid"), ({}, 400, "invalid")],
)
def test_logout_with_a_bad_token_is_a_json_error(db, body, status, code):
    response = APIClient().post("/api/v1/auth/logout/", body, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code


def test_logout_refuses_an_access_token(owner):
    pair = obtain(owner.email)
    response = APIClient().post("/api/v1/auth/logout/", {"refresh": pair["access"]}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_the_revocation_check_adds_no_query(owner):
    """The user row simplejwt loads is the one compared: one SELECT of tenancy_user per
    request, and no query of the blacklist tables (access tokens are never looked up)."""
    access = obtain(owner.email)["access"]
    get_current(access)
    with CaptureQueriesContext(connection) as queries:
        assert get_current(access).status_code == 200
    sql = [query["sql"] for query in queries.captured_queries]
    assert sum('FROM "tenancy_user"' in statement for statement in sql) == 1
    assert not [statement for statement in sql if "token_blacklist" in statement]


def test_the_schema_documents_logout_and_the_token_answers(api):
    schema = APIClient().get("/api/schema/?format=json").json()
    logout = schema["paths"]["/api/v1/auth/logout/"]["post"]
    assert set(logout["responses"]) >= {"204", "400", "401"}
    refresh_op = schema["paths"]["/api/v1/auth/token/refresh/"]["post"]
    assert set(refresh_op["responses"]) >= {"200", "401", "429"}
    assert set(schema["paths"]["/api/v1/auth/token/"]["post"]["responses"]) >= {"200", "429"}


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_refreshes_of_one_token_yield_one_new_pair():
    """The second waits on the blacklist row of the first (unique per token) and, once the
    first commits, finds the token blacklisted: 401, never a second valid pair."""
    from core.testing import race_second_behind_first
    from tenancy.tests.factories import OrganizationFactory
    from tenancy.tokens import RotatingTokenRefreshSerializer

    user = member_of(OrganizationFactory(), email="racer@example.test")
    token = obtain(user.email)["refresh"]

    def use():
        serializer = RotatingTokenRefreshSerializer(data={"refresh": token})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    results = race_second_behind_first(use, use, what="the second refresh")
    assert set(results["first"]) == {"access", "refresh"}
    assert isinstance(results["second"], InvalidToken)
    assert refresh(results["first"]["refresh"]).status_code == 200


def test_organization_settings_are_validated_and_the_plan_is_not_among_them(api, org):
    bad = api.patch("/api/v1/organizations/current/", {"billing_timezone": "Mars/Olympus"})
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"billing_timezone"}
    blank = api.patch("/api/v1/organizations/current/", {"name": ""}, format="json")
    assert blank.status_code == 400
    changed = api.patch(
        "/api/v1/organizations/current/",
        {"name": "Acme Law LLP", "billing_timezone": "Europe/Berlin", "plan_tier": "enterprise"},
        format="json",
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "Acme Law LLP"
    assert changed.json()["role"] == "owner"
    org.refresh_from_db()
    assert (org.name, org.billing_timezone, org.plan_tier) == (
        "Acme Law LLP",
        "Europe/Berlin",
        "pro",
    )
