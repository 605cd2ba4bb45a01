"""The staff admin's invitations page (``tenancy.admin.InvitationAdmin``): every
organization's invitations with their status, the status filter, search, the revoke
action (open invitations only, per organization), no add and no delete; a firm's own
user is refused the admin."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tenancy.context import cross_tenant, tenant_context
from tenancy.models import Invitation, User
from tenancy.tests.factories import PASSWORD, member_of

pytestmark = pytest.mark.django_db

URL = "/admin/tenancy/invitation/"


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser(email="staff@goldleaves.test", password=PASSWORD)
    client.force_login(user)
    return user


def _invite(org, email, **fields) -> Invitation:
    fields.setdefault("expires_at", timezone.now() + timedelta(days=7))
    with tenant_context(org):
        return Invitation.objects.create(organization=org, email=email, **fields)


@pytest.fixture
def invitations(org, outsider_org):
    now = timezone.now()
    return {
        "pending": _invite(org, "pending@ours.test"),
        "sent": _invite(outsider_org, "sent@theirs.test", sent_at=now),
        "used": _invite(org, "used@ours.test", sent_at=now, used_at=now),
        "revoked": _invite(outsider_org, "revoked@theirs.test", revoked_at=now),
        "expired": _invite(org, "expired@ours.test", expires_at=now - timedelta(hours=1)),
    }


def _reload(invitation) -> Invitation:
    with cross_tenant(reason="test: read back across organizations"):
        return Invitation.objects.get(pk=invitation.pk)


def test_the_list_shows_every_organizations_invitations_with_their_status(
    staff, invitations, client
):
    response = client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    for status, invitation in invitations.items():
        assert invitation.email in page
        assert f'<td class="field-status">{status}</td>' in page


@pytest.mark.parametrize("status", ["pending", "sent", "used", "revoked", "expired"])
def test_the_status_filter_keeps_only_that_status(staff, invitations, client, status):
    response = client.get(URL, {"status": status})
    assert response.status_code == 200
    assert [i.pk for i in response.context["cl"].result_list] == [invitations[status].pk]


def test_search_by_email_and_organization(staff, invitations, client, outsider_org):
    by_email = client.get(URL, {"q": "used@ours"}).context["cl"].result_list
    assert [i.pk for i in by_email] == [invitations["used"].pk]
    by_org = client.get(URL, {"q": outsider_org.slug}).context["cl"].result_list
    assert {i.pk for i in by_org} == {invitations["sent"].pk, invitations["revoked"].pk}


def test_revoke_action_closes_only_the_open_ones_in_every_organization(staff, invitations, client):
    before = {name: _reload(i).revoked_at for name, i in invitations.items()}
    response = client.post(
        URL,
        {"action": "revoke_open", "_selected_action": [i.pk for i in invitations.values()]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Revoked 3 of 5 selected invitations" in response.content.decode()
    after = {name: _reload(i) for name, i in invitations.items()}
    # pending, sent and expired were open (not used, not revoked): revoked now.
    for name in ("pending", "sent", "expired"):
        assert after[name].revoked_at is not None
    assert after["used"].revoked_at is None and after["used"].used_at is not None
    assert after["revoked"].revoked_at == before["revoked"]
    # Again: nothing more to revoke.
    again = client.post(
        URL,
        {"action": "revoke_open", "_selected_action": [i.pk for i in invitations.values()]},
        follow=True,
    )
    assert "Revoked 0 of 5 selected invitations" in again.content.decode()


def test_staff_can_neither_add_nor_delete_nor_edit_an_invitation(staff, invitations, client):
    invitation = invitations["pending"]
    assert client.get(f"{URL}add/").status_code == 403
    assert client.get(f"{URL}{invitation.pk}/delete/").status_code == 403
    page = client.get(f"{URL}{invitation.pk}/change/")
    assert page.status_code == 200
    assert 'name="email"' not in page.content.decode()  # shown, not editable
    client.post(f"{URL}{invitation.pk}/change/", {"email": "changed@ours.test"})
    assert _reload(invitation).email == "pending@ours.test"


def test_a_firms_own_owner_is_refused_the_admin(org, invitations, client):
    owner = member_of(org, role="owner")
    client.force_login(owner)
    response = client.get(URL)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_each_invitation_is_selected_by_exactly_the_filter_of_its_own_status(invitations):
    """``invitation_status_q`` (the admin's filter) and ``invitation_status`` (the API's
    field) apply one rule: every invitation matches the filter of its status and no other."""
    from tenancy.invitations import INVITATION_STATUSES, invitation_status, invitation_status_q

    with cross_tenant(reason="test: every organization's invitations"):
        for invitation in Invitation.objects.all():
            matching = [
                status
                for status in INVITATION_STATUSES
                if Invitation.objects.filter(invitation_status_q(status), pk=invitation.pk).exists()
            ]
            assert matching == [invitation_status(invitation)]
    with pytest.raises(ValueError, match="unknown invitation status"):
        invitation_status_q("lost")
