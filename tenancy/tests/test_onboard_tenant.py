from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.testing import race_second_behind_first
from tenancy.models import Membership, Organization, User

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("onboard_tenant", *args, stdout=out)
    return out.getvalue()


def test_onboard_creates_organization_owner_and_membership():
    out = run("--name", "Acme Law", "--owner-email", "Owner@Acme.test", "--plan", "pro")
    org = Organization.objects.get(slug="acme-law")
    assert org.name == "Acme Law" and org.plan_tier == "pro"
    owner = User.objects.get(email__iexact="owner@acme.test")
    assert owner.organization == org
    assert Membership.objects.get(organization=org, user=owner).role == "owner"
    assert "created organization 'acme-law'" in out


def test_onboard_is_idempotent_on_slug():
    run("--name", "Acme Law", "--owner-email", "owner@acme.test")
    out = run("--name", "Acme Law", "--owner-email", "owner@acme.test")
    assert "unchanged" in out
    assert Organization.objects.filter(slug="acme-law").count() == 1
    assert User.objects.count() == 1
    assert Membership.objects.count() == 1


def test_onboard_with_password_lets_the_owner_log_in(client):
    run("--name", "Beta LLP", "--owner-email", "b@beta.test", "--password", "s3cret-pass-123")
    response = client.post(
        "/api/v1/auth/token/",
        {"email": "b@beta.test", "password": "s3cret-pass-123"},
        content_type="application/json",
    )
    assert response.status_code == 200


def test_onboard_requires_name_and_email():
    with pytest.raises(CommandError, match="--name and --owner-email"):
        run("--name", "Only Name")


def test_onboard_rejects_a_bad_email_and_writes_nothing():
    with pytest.raises(CommandError, match="invalid owner email"):
        run("--name", "Acme Law", "--owner-email", "not-an-email")
    assert not Organization.objects.exists()


def test_onboard_csv(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nAcme Law,a@acme.test,pro\nBeta LLP,b@beta.test,\n")
    out = run("--csv", str(path))
    assert set(Organization.objects.values_list("slug", "plan_tier")) == {
        ("acme-law", "pro"),
        ("beta-llp", "starter"),
    }
    assert "row 2: created" in out and "row 3: created" in out
    assert "unchanged" in run("--csv", str(path))


def test_onboard_csv_with_a_bad_row_writes_nothing(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text(
        "name,owner_email,plan\nAcme Law,a@acme.test,pro\nBeta LLP,b@beta.test,platinum\n"
        ",c@c.test,pro\nGamma,not-an-email,pro\n"
    )
    with pytest.raises(CommandError) as excinfo:
        run("--csv", str(path))
    message = str(excinfo.value)
    assert "row 3: unknown plan 'platinum'" in message
    assert "row 4: name is required" in message
    assert not Organization.objects.exists()
    assert not User.objects.exists()


def test_onboard_csv_bad_email_row_rolls_back_earlier_rows(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nAcme Law,a@acme.test,pro\nGamma,not-an-email,pro\n")
    with pytest.raises(CommandError, match="row 3: invalid owner email"):
        run("--csv", str(path))
    assert not Organization.objects.exists()


def test_onboard_csv_missing_column_and_missing_file(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text("name,plan\nAcme,pro\n")
    with pytest.raises(CommandError, match="missing: owner_email"):
        run("--csv", str(path))
    with pytest.raises(CommandError, match="not found"):
        run("--csv", str(tmp_path / "absent.csv"))


def test_onboard_dry_run_writes_nothing():
    out = run("--name", "Acme Law", "--owner-email", "a@acme.test", "--dry-run")
    assert "Dry run" in out
    assert not Organization.objects.exists()


def test_the_command_exits_non_zero_on_a_bad_row(tmp_path):
    import os
    import subprocess
    import sys

    from tenancy.tests.dburl import subprocess_database_env

    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nBeta,b@beta.test,platinum\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "onboard_tenant", "--csv", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **subprocess_database_env()},  # the test database (it reads slugs)
    )
    assert result.returncode == 1
    assert "unknown plan 'platinum'" in result.stderr


# --- Idempotent on the slug, in the safe sense: never a second firm's owner in the first ---


def test_same_slug_with_a_different_owner_is_refused_and_writes_nothing():
    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test")
    first = Organization.objects.get(slug="smith-jones")
    with pytest.raises(CommandError) as excinfo:
        run("--name", "Smith Jones", "--owner-email", "b@smithjones.test", "--password", "pw-x1")
    message = str(excinfo.value)
    assert "organization slug 'smith-jones' already exists with a different owner" in message
    assert message.endswith("nothing was written.")
    assert not User.objects.filter(email__iexact="b@smithjones.test").exists()
    assert list(Membership.objects.values_list("organization_id", "user__email", "role")) == [
        (first.pk, "a@smith-jones.test", "owner")
    ]
    first.refresh_from_db()
    assert first.name == "Smith & Jones"


def test_same_slug_refused_even_for_an_existing_user_or_a_member_of_that_organization():
    from tenancy.tests.factories import member_of

    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test")
    org = Organization.objects.get(slug="smith-jones")
    member = member_of(org, role="member", email="m@smith-jones.test")
    with pytest.raises(CommandError, match="already exists with a different owner"):
        run("--name", "Smith Jones", "--owner-email", member.email)
    assert Membership.objects.get(organization=org, user=member).role == "member"
    assert Membership.objects.filter(organization=org, role="owner").count() == 1


def test_same_slug_and_the_same_owner_in_another_case_is_unchanged():
    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test", "--plan", "pro")
    out = run("--name", "Smith Jones", "--owner-email", "A@Smith-Jones.TEST", "--plan", "starter")
    assert "unchanged: organization 'smith-jones' and owner a@smith-jones.test exist" in out
    org = Organization.objects.get(slug="smith-jones")
    assert (org.name, org.plan_tier) == ("Smith & Jones", "pro")
    assert User.objects.count() == 1 and Membership.objects.count() == 1


def test_csv_row_whose_slug_exists_with_a_different_owner_rolls_back_every_row(tmp_path):
    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test")
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nBeta LLP,b@beta.test,pro\nSmith Jones,c@c.test,pro\n")
    with pytest.raises(CommandError) as excinfo:
        run("--csv", str(path))
    assert "row 3: organization slug 'smith-jones' already exists with a different owner" in str(
        excinfo.value
    )
    assert set(Organization.objects.values_list("slug", flat=True)) == {"smith-jones"}
    assert not User.objects.filter(email__in=["b@beta.test", "c@c.test"]).exists()


def test_csv_rows_with_one_slug_and_different_owners_are_rejected_before_writing(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text(
        "name,owner_email,plan\nSmith & Jones,a@sj.test,pro\nBeta LLP,b@beta.test,\n"
        "Smith Jones,c@other.test,starter\n"
    )
    with pytest.raises(CommandError) as excinfo:
        run("--csv", str(path))
    assert (
        "row 4: 'Smith Jones' has the organization slug 'smith-jones' of row 2 "
        "('Smith & Jones') with a different owner (c@other.test here, a@sj.test there)"
    ) in str(excinfo.value)
    assert not Organization.objects.exists()
    assert not User.objects.exists()


def test_csv_rows_with_one_slug_and_the_same_owner_onboard_once(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nSmith & Jones,a@sj.test,pro\nSmith Jones,A@SJ.test,\n")
    out = run("--csv", str(path))
    assert "row 2: created" in out and "row 3: unchanged" in out
    assert Organization.objects.get().name == "Smith & Jones"
    assert Membership.objects.count() == 1


def test_csv_name_without_letters_or_digits_is_a_bad_row(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nAcme Law,a@acme.test,pro\n&&&,b@b.test,pro\n")
    with pytest.raises(CommandError, match="row 3: invalid organization name '&&&'"):
        run("--csv", str(path))
    assert not Organization.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_1_when_the_slug_has_a_different_owner(tmp_path):
    """The real process, on this run's test database: exit status 1, the message on stderr,
    and nothing written (committed data, so a leak would be visible)."""
    import os
    import subprocess
    import sys

    from tenancy.tests.dburl import subprocess_database_url

    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test")
    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nBeta LLP,b@beta.test,pro\nSmith Jones,c@c.test,pro\n")
    env = {**os.environ, "DATABASE_URL": subprocess_database_url()}
    result = subprocess.run(
        [sys.executable, "manage.py", "onboard_tenant", "--csv", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "row 3: organization slug 'smith-jones' already exists with a different owner" in (
        result.stderr
    )
    assert set(Organization.objects.values_list("slug", flat=True)) == {"smith-jones"}
    assert list(User.objects.values_list("email", flat=True)) == ["a@smith-jones.test"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second_owner", ["A@acme.test", "b@other.test"])
def test_two_onboardings_of_one_new_slug_at_once(second_owner):
    """A real race on two connections: the first onboarding holds its transaction open
    after inserting the organization; the second's ``SELECT ... FOR UPDATE`` finds no row
    (uncommitted: nothing to lock) and its INSERT waits on the unique slug index (asserted
    with ``pg_blocking_pids``) until the first commits, then fails. The same owner is
    "unchanged", another owner is refused with the command's message (exit status 1),
    never an ``IntegrityError`` traceback."""

    from tenancy.context import cross_tenant
    from tenancy.services import organization_onboard

    results = race_second_behind_first(
        lambda: organization_onboard(name="Acme Law", owner_email="a@acme.test"),
        lambda: run("--name", "Acme Law", "--owner-email", second_owner, "--password", "pw-x1"),
        what="the second onboarding",
    )
    assert not isinstance(results["first"], Exception), results["first"]
    assert results["first"].organization_created
    if second_owner.lower() == "a@acme.test":
        assert results["second"] == (
            "unchanged: organization 'acme-law' and owner a@acme.test exist.\n"
        )
    else:
        assert isinstance(results["second"], CommandError), results["second"]
        assert str(results["second"]) == (
            "organization slug 'acme-law' already exists with a different owner "
            "(b@other.test is not an owner of 'Acme Law'); nothing was written."
        )
    with cross_tenant(reason="test assertions"):
        assert list(Organization.objects.values_list("slug", flat=True)) == ["acme-law"]
        assert list(User.objects.values_list("email", flat=True)) == ["a@acme.test"]
        assert Membership.objects.count() == 1


# --- Without --password the owner is invited; every CSV problem at once --------------------


def test_onboard_without_password_invites_the_owner_who_then_logs_in():
    import re

    from django.core import mail
    from rest_framework.test import APIClient

    from tenancy.models import Invitation
    from tenancy.tests.jobs import run_jobs

    out = run("--name", "Acme Law", "--owner-email", "owner@acme.test")
    assert "invitation sent to owner@acme.test (owner of 'acme-law')" in out
    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by) == (
        "owner@acme.test",
        "owner",
        None,
    )
    again = run("--name", "Acme Law", "--owner-email", "owner@acme.test")
    assert "an invitation to owner@acme.test is still open" in again
    assert "not sent again" in again
    assert Invitation.objects.count() == 1
    run_jobs()
    assert [m.to for m in mail.outbox] == [["owner@acme.test"]]
    token = re.search(r"\?token=(\S+)", mail.outbox[0].body).group(1)
    password = "owner-passphrase-77"
    accepted = APIClient().post(
        "/api/v1/auth/invitations/accept/", {"token": token, "password": password}, format="json"
    )
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["role"] == "owner"
    login = APIClient().post(
        "/api/v1/auth/token/", {"email": "owner@acme.test", "password": password}, format="json"
    )
    assert login.status_code == 200
    assert Membership.objects.get().role == "owner"  # the onboarding's, not a second one


def test_onboard_dry_run_says_would_create_and_would_invite():
    from tenancy.models import Invitation

    out = run("--name", "Acme Law", "--owner-email", "a@acme.test", "--dry-run")
    lines = out.splitlines()
    assert lines[0].startswith("would create organization 'acme-law'")
    assert "would invite a@acme.test (owner) by email" in lines[1:]
    assert lines[-1] == "Dry run: rolled back, nothing was written."
    assert "created" not in out.replace("would create", "")
    assert not Organization.objects.exists() and not Invitation.objects.exists()


def test_onboard_with_password_sends_no_invitation():
    from tenancy.models import Invitation

    out = run("--name", "Acme Law", "--owner-email", "a@acme.test", "--password", "pw-x1-long")
    assert "invitation" not in out
    assert not Invitation.objects.exists()


def test_onboard_csv_reports_every_problem_of_every_row_before_writing(tmp_path):
    run("--name", "Smith & Jones", "--owner-email", "a@smith-jones.test")
    path = tmp_path / "tenants.csv"
    path.write_text(
        "name,owner_email,plan\n"
        "Good Firm,g@good.test,pro\n"
        "!!!,not-an-email,platinum\n"
        "Smith Jones,c@c.test,\n"
        ",,\n"
    )
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("onboard_tenant", "--csv", str(path), stdout=out)
    message = str(excinfo.value)
    assert message.startswith("6 problem(s) in 3 row(s); nothing was written:")
    for expected in (
        "row 3: invalid organization name '!!!': it needs letters or digits",
        "row 3: invalid owner email 'not-an-email'",
        "row 3: unknown plan 'platinum'",
        "row 4: organization slug 'smith-jones' already exists with a different owner",
        "row 5: name is required",
        "row 5: owner_email is required",
    ):
        assert expected in message, message
    assert out.getvalue() == ""  # nothing reported as created before the refusal
    assert set(Organization.objects.values_list("slug", flat=True)) == {"smith-jones"}


def test_csv_rows_the_database_could_not_store_are_bad_rows(tmp_path):
    """A NUL, a name over 200 or an email over 254 characters would have failed in
    PostgreSQL with a traceback; they are problems of their rows, found before writing."""
    path = tmp_path / "tenants.csv"
    long_email = "a" * 250 + "@x.test"
    path.write_text(
        "name,owner_email,plan\nAcme Law,a@acme.test,pro\n"
        f"Nul\x00 Law,n@nul.test,pro\n{'L' * 201},l@long.test,pro\nLong Mail,{long_email},pro\n"
    )
    with pytest.raises(CommandError) as excinfo:
        run("--csv", str(path))
    message = str(excinfo.value)
    assert "3 problem(s) in 3 row(s)" in message
    assert "row 3: name contains a NUL character" in message
    assert "row 4: name is 201 characters long, over 200" in message
    assert "row 5: owner email is 257 characters long, over 254" in message
    assert not Organization.objects.exists() and not User.objects.exists()
    with pytest.raises(CommandError, match="name is 201 characters long"):
        run("--name", "L" * 201, "--owner-email", "l@long.test")


def test_a_csv_that_is_not_utf8_or_not_a_file_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "tenants.csv"
    path.write_bytes(b"name,owner_email,plan\nAcme Law,a@acme.test,pro\nB\xe9ta,b@beta.test,pro\n")
    with pytest.raises(CommandError, match=r"line 3: not UTF-8"):
        run("--csv", str(path))
    with pytest.raises(CommandError, match="not a file"):
        run("--csv", str(tmp_path))
    assert not Organization.objects.exists()
