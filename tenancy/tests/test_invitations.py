"""Invitations (``tenancy.invitations``): ``POST/GET .../organizations/current/invitations/``,
``DELETE .../invitations/{id}/``, ``POST /api/v1/auth/invitations/accept/`` and the
``tenancy.send_invitation`` job, with the owner, an admin, a member, an outsider
organization and no token. Email through Django's locmem backend (``mail.outbox``)."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from core.testing import race_second_behind_first
from tenancy import invitations
from tenancy.context import tenant_context
from tenancy.models import Invitation, Membership, User
from tenancy.testing import bearer_client
from tenancy.tests.factories import PASSWORD, OrganizationFactory, member_of
from tenancy.tests.jobs import run_jobs

pytestmark = pytest.mark.django_db

LIST = "/api/v1/organizations/current/invitations/"
ACCEPT = "/api/v1/auth/invitations/accept/"
NEW_PASSWORD = "a-long-passphrase-42"


@pytest.fixture
def firm():
    org = OrganizationFactory(name="Invite Law", slug="invite-law")
    return {
        "org": org,
        "owner": member_of(org, role="owner"),
        "admin": member_of(org, role="admin"),
        "member": member_of(org, role="member"),
    }


def invite(user, email="new@invite.test", role="member"):
    return bearer_client(user).post(LIST, {"email": email, "role": role}, format="json")


def sent_token(index=-1) -> str:
    """Run the deferred email jobs; the token of the ``index``-th email sent."""
    run_jobs()
    match = re.search(r"\?token=(\S+)", mail.outbox[index].body)
    assert match, mail.outbox[index].body
    return match.group(1)


def accept(token, password=NEW_PASSWORD, address="10.1.0.1"):
    return APIClient().post(
        ACCEPT, {"token": token, "password": password}, format="json", REMOTE_ADDR=address
    )


def test_owner_invites_the_job_emails_a_link_and_only_its_hash_is_stored(firm):
    response = invite(firm["owner"], email="New@Invite.test", role="admin")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending" and body["role"] == "admin"
    assert body["invited_by"] == firm["owner"].email
    assert "token" not in body and "token_hash" not in body
    assert mail.outbox == []  # sent by the job, not in the request
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args::text FROM procrastinate_jobs WHERE task_name = %s",
            ["tenancy.send_invitation"],
        )
        (args,) = cursor.fetchone()
    assert body["id"] in args and "token" not in args

    token = sent_token()
    email = mail.outbox[0]
    assert email.to == ["New@Invite.test"] and "Invite Law" in email.subject
    invitation = Invitation.objects.get(pk=body["id"])
    assert invitation.token_hash == invitations.token_hash(token) and len(token) > 60
    assert invitation.sent_at is not None
    expected_expiry = invitation.created_at + timedelta(hours=72)
    assert invitation.expires_at == expected_expiry
    with connection.cursor() as cursor:  # the token itself is nowhere in the database
        cursor.execute(
            "SELECT count(*) FROM tenancy_invitation WHERE row_to_json(tenancy_invitation)::text "
            "LIKE %s",
            [f"%{token.split('.')[1]}%"],
        )
        assert cursor.fetchone()[0] == 0
    listed = bearer_client(firm["admin"]).get(LIST).json()["results"]
    assert [(i["email"], i["status"]) for i in listed] == [("New@Invite.test", "sent")]


def test_accept_creates_the_user_and_membership_and_they_log_in(firm):
    invite(firm["owner"], email="associate@invite.test", role="member")
    response = accept(sent_token())
    assert response.status_code == 201, response.content
    assert response.json() == {
        "email": "associate@invite.test",
        "organization": str(firm["org"].pk),
        "role": "member",
    }
    user = User.objects.get(email="associate@invite.test")
    assert user.organization == firm["org"]
    assert Membership.objects.get(organization=firm["org"], user=user).role == "member"
    login = APIClient().post(
        "/api/v1/auth/token/",
        {"email": "associate@invite.test", "password": NEW_PASSWORD},
        format="json",
    )
    assert login.status_code == 200
    current = APIClient()
    current.credentials(HTTP_AUTHORIZATION=f"Bearer {login.json()['access']}")
    assert current.get("/api/v1/organizations/current/").json()["role"] == "member"


def test_a_used_token_is_refused_the_second_time(firm):
    invite(firm["owner"])
    token = sent_token()
    assert accept(token).status_code == 201
    again = accept(token)
    assert again.status_code == 400
    assert again.json()["code"] == "invitation_used"
    assert Membership.objects.filter(user__email="new@invite.test").count() == 1


def test_an_expired_token_is_refused(firm):
    invite(firm["owner"])
    token = sent_token()
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = accept(token)
    assert response.status_code == 400
    assert response.json()["code"] == "invitation_expired"
    assert not User.objects.filter(email="new@invite.test").exists()


def test_a_revoked_token_is_refused_and_revoking_twice_is_204(firm):
    created = invite(firm["owner"]).json()
    token = sent_token()
    admin = bearer_client(firm["admin"])
    assert admin.delete(f"{LIST}{created['id']}/").status_code == 204
    assert admin.delete(f"{LIST}{created['id']}/").status_code == 204
    response = accept(token)
    assert response.status_code == 400
    assert response.json()["code"] == "invitation_revoked"
    assert Invitation.objects.get().revoked_at is not None


def test_revoking_a_used_invitation_is_400(firm):
    created = invite(firm["owner"]).json()
    assert accept(sent_token()).status_code == 201
    response = bearer_client(firm["owner"]).delete(f"{LIST}{created['id']}/")
    assert response.status_code == 400
    assert response.json()["code"] == "invitation_used"


@pytest.mark.parametrize(
    "token",
    ["garbage", "0" * 32 + ".x", "not-hex-" * 4 + ".x", "", "x" * 300],
)
def test_a_token_that_matches_nothing_is_400_invitation_invalid(firm, token):
    response = accept(token)
    assert response.status_code == 400
    assert response.json()["code"] in ("invitation_invalid", "invalid")
    if token and len(token) <= 200:
        assert response.json()["code"] == "invitation_invalid"


def test_a_token_of_our_organization_with_a_wrong_secret_is_invalid(firm):
    invite(firm["owner"])
    token = sent_token()
    forged = token.split(".")[0] + ".AAAA" + token.split(".")[1][4:]
    response = accept(forged)
    assert response.status_code == 400 and response.json()["code"] == "invitation_invalid"


def test_a_weak_password_is_refused_by_the_validators_and_the_link_stays_usable(firm):
    invite(firm["owner"])
    token = sent_token()
    response = accept(token, password="123")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and body["errors"]["password"]
    assert Invitation.objects.get().used_at is None
    assert accept(token).status_code == 201


def test_an_existing_account_must_send_its_own_password(firm):
    other_org = OrganizationFactory()
    existing = member_of(other_org, role="owner", email="lawyer@elsewhere.test")
    invite(firm["owner"], email="LAWYER@elsewhere.test", role="admin")
    token = sent_token()
    wrong = accept(token, password="not-their-password-1")
    assert wrong.status_code == 400 and wrong.json()["code"] == "password_mismatch"
    right = accept(token, password=PASSWORD)
    assert right.status_code == 201, right.content
    assert Membership.objects.get(organization=firm["org"], user=existing).role == "admin"
    existing.refresh_from_db()
    assert existing.organization == other_org  # the default organization is kept


def test_an_admin_cannot_invite_an_owner_but_may_invite_an_admin(firm):
    refused = invite(firm["admin"], role="owner")
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_forbidden"
    assert invite(firm["admin"], role="admin").status_code == 201
    assert invite(firm["owner"], email="partner@invite.test", role="owner").status_code == 201


def test_a_member_may_not_list_invite_or_revoke(firm):
    created = invite(firm["owner"]).json()
    member = bearer_client(firm["member"])
    for response in (
        member.get(LIST),
        member.post(LIST, {"email": "x@invite.test", "role": "member"}, format="json"),
        member.delete(f"{LIST}{created['id']}/"),
    ):
        assert response.status_code == 403 and response.json()["code"] == "role_forbidden"


def test_no_token_is_401(firm):
    assert APIClient().get(LIST).status_code == 401
    assert APIClient().post(LIST, {"email": "x@y.test"}, format="json").status_code == 401


def test_an_outsider_never_sees_or_revokes_our_invitations(firm):
    created = invite(firm["owner"]).json()
    outsider = bearer_client(member_of(OrganizationFactory(), role="owner"))
    assert outsider.get(LIST).json()["results"] == []
    response = outsider.delete(f"{LIST}{created['id']}/")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert Invitation.objects.get().revoked_at is None


def test_inviting_a_member_is_400_and_a_new_invitation_revokes_the_open_one(firm):
    response = invite(firm["owner"], email=firm["member"].email.upper())
    assert response.status_code == 400 and response.json()["code"] == "already_member"
    first = invite(firm["owner"]).json()
    second = invite(firm["owner"]).json()
    assert Invitation.objects.get(pk=first["id"]).revoked_at is not None
    assert Invitation.objects.get(pk=second["id"]).revoked_at is None
    run_jobs()
    assert len(mail.outbox) == 1  # the revoked one's job sends nothing


@pytest.mark.parametrize("body", [{"email": "not-an-email"}, {"email": "a@b.test", "role": "boss"}])
def test_invalid_invitation_input_is_400_json(firm, body):
    response = bearer_client(firm["owner"]).post(LIST, body, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_accept_is_throttled_per_token(firm, settings):
    settings.LOGIN_RATE_PER_ADDRESS_EMAIL = 2
    invite(firm["owner"])
    token = sent_token()
    for _ in range(2):
        assert accept(token, password="1").status_code == 400
    throttled = accept(token, address="10.9.0.9")
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) >= 1


def test_the_send_job_twice_replaces_the_link(firm):
    created = invite(firm["owner"]).json()
    first = sent_token()
    with tenant_context(firm["org"]):
        invitations.invitation_send(organization=firm["org"], invitation_id=created["id"])
    second = re.search(r"\?token=(\S+)", mail.outbox[-1].body).group(1)
    assert first != second
    assert accept(first).json()["code"] == "invitation_invalid"
    assert accept(second).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_accepts_of_one_token_make_one_membership():
    """A real race on two connections: the first accept holds its transaction open after
    claiming the invitation; the second's conditional UPDATE waits on the row lock
    (asserted with ``pg_blocking_pids``), then matches nothing and is refused."""
    org = OrganizationFactory(name="Race Law", slug="race-law")
    owner = member_of(org, role="owner")
    with tenant_context(org):
        invitation = invitations.invitation_create(
            organization=org, acting_user=owner, email="racer@race.test", role="member"
        )
        invitations.invitation_send(organization=org, invitation_id=invitation.pk)
    token = re.search(r"\?token=(\S+)", mail.outbox[-1].body).group(1)

    results = race_second_behind_first(
        lambda: invitations.invitation_accept(token=token, password=NEW_PASSWORD),
        lambda: invitations.invitation_accept(token=token, password=NEW_PASSWORD),
        what="the second accept",
    )
    assert isinstance(results["first"], Membership), results["first"]
    assert isinstance(results["second"], invitations.InvitationRefused)
    assert results["second"].code == "invitation_used"
    with tenant_context(org):
        assert Membership.objects.filter(organization=org, user__email="racer@race.test").count()
        assert (
            Membership.objects.filter(organization=org, user__email="racer@race.test").count() == 1
        )
    assert User.objects.filter(email="racer@race.test").count() == 1


def test_an_invitation_without_a_role_is_for_a_member(firm):
    response = bearer_client(firm["admin"]).post(
        LIST, {"email": "plain@invite.test"}, format="json"
    )
    assert (response.status_code, response.json()["role"]) == (201, "member")
    invitation = Invitation.objects.for_organization(firm["org"]).get(email="plain@invite.test")
    assert invitation.role == "member"
