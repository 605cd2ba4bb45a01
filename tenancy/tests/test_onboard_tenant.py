from io import StringIO

import pytest
from django.core.management import CommandError, call_command

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
    assert "row 4: name and owner_email are required" in message
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
    import subprocess
    import sys

    path = tmp_path / "tenants.csv"
    path.write_text("name,owner_email,plan\nBeta,b@beta.test,platinum\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "onboard_tenant", "--csv", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "unknown plan 'platinum'" in result.stderr
