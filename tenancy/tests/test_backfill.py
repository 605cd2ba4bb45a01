"""``manage.py backfill_organizations`` on a generated data set."""

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from tenancy.backfill import BackfillError, _free_slugs, organizations_backfill
from tenancy.context import cross_tenant
from tenancy.models import Membership, MembershipRole, Organization, User
from tenancy.tests.dburl import subprocess_database_url
from tenancy.tests.factories import OrganizationFactory

FIRM_DOMAINS = [f"firm{n}-law.com" for n in range(20)]
PUBLIC = ["gmail.com", "yahoo.com", "outlook.com"]
ROOT = Path(__file__).resolve().parents[2]


def generate(n_firm_users=2000, n_public=800, n_assigned=200, n_with_membership=50):
    """Users of firm domains (sharing), public-mail users, users already assigned, users
    with a membership but no default organization, and slug collisions:

    * an unrelated organization already has the slug ``firm0-law-com``;
    * ``firm1-law-com@gmail.com`` wants the slug of firm1-law.com's organization;
    * ``john.doe@gmail.com`` and ``john-doe@yahoo.com`` want the same slug.
    Returns the ids/objects the assertions need.
    """
    unrelated = OrganizationFactory(name="Firm Zero (unrelated)", slug="firm0-law-com")
    assigned_org = OrganizationFactory(name="Assigned", slug="assigned")
    member_org = OrganizationFactory(name="Member Org", slug="member-org")
    users = [
        User(email=f"lawyer{i}@{FIRM_DOMAINS[i % len(FIRM_DOMAINS)]}") for i in range(n_firm_users)
    ]
    users += [User(email=f"solo{i}@{PUBLIC[i % len(PUBLIC)]}") for i in range(n_public)]
    users += [
        User(email="firm1-law-com@gmail.com"),
        User(email="john.doe@gmail.com"),
        User(email="john-doe@yahoo.com"),
        User(email="Mixed.Case@Firm2-Law.com"),
    ]
    users += [
        User(email=f"assigned{i}@{FIRM_DOMAINS[3]}", organization=assigned_org)
        for i in range(n_assigned)
    ]
    with_membership = [User(email=f"member{i}@{FIRM_DOMAINS[4]}") for i in range(n_with_membership)]
    User.objects.bulk_create(users + with_membership, batch_size=1000)
    with cross_tenant(reason="test set-up"):
        Membership.objects.bulk_create(
            Membership(organization=member_org, user=u, role=MembershipRole.MEMBER)
            for u in User.objects.filter(email__startswith="member")
        )
    return {"unrelated": unrelated, "assigned_org": assigned_org, "member_org": member_org}


def snapshot():
    with cross_tenant(reason="test snapshot"):
        return (
            sorted(User.objects.values_list("id", "organization_id")),
            sorted(Organization.objects.values_list("slug", flat=True)),
            sorted(Membership.objects.values_list("organization_id", "user_id", "role")),
        )


def assert_backfilled(data):
    with cross_tenant(reason="test assertions"):
        assert not User.objects.filter(organization__isnull=True).exists()
        # already assigned users keep their organization and get no membership
        assigned = User.objects.filter(email__startswith="assigned")
        assert set(assigned.values_list("organization_id", flat=True)) == {data["assigned_org"].pk}
        assert not Membership.objects.filter(user__in=assigned).exists()
        # users with a membership get that organization, no new organization
        members = User.objects.filter(email__startswith="member")
        assert set(members.values_list("organization_id", flat=True)) == {data["member_org"].pk}
        assert Membership.objects.filter(user__in=members).count() == members.count()
        # the unrelated organization is untouched, firm0's users got a suffixed slug
        assert not Membership.objects.filter(organization=data["unrelated"]).exists()
        firm0 = Organization.objects.get(backfill_key="domain:firm0-law.com")
        assert firm0.slug == "firm0-law-com-2"
        # colleagues share one organization per domain; the first user is its only owner
        for domain in FIRM_DOMAINS:
            users = User.objects.filter(email__iendswith="@" + domain).exclude(
                email__startswith=("assigned")
            )
            users = users.exclude(email__startswith="member").order_by("id")
            orgs = set(users.values_list("organization_id", flat=True))
            assert len(orgs) == 1, domain
            org_id = orgs.pop()
            roles = dict(
                Membership.objects.filter(organization_id=org_id).values_list("user_id", "role")
            )
            assert roles[users[0].id] == MembershipRole.OWNER
            assert Counter(roles.values()) == {
                MembershipRole.OWNER: 1,
                MembershipRole.MEMBER: users.count() - 1,
            }
        mixed = User.objects.get(email="Mixed.Case@Firm2-Law.com")
        assert mixed.organization.backfill_key == "domain:firm2-law.com"
        # public mail: one organization each, slug from the local part, owner
        solo = User.objects.get(email="solo0@gmail.com")
        assert solo.organization.slug == "solo0"
        assert solo.organization.backfill_key == "email:solo0@gmail.com"
        assert Membership.objects.get(user=solo).role == MembershipRole.OWNER
        assert User.objects.filter(organization=solo.organization).count() == 1
        colliding = User.objects.get(email="firm1-law-com@gmail.com").organization
        assert colliding.slug == "firm1-law-com-2"
        assert Organization.objects.get(backfill_key="domain:firm1-law.com").slug == "firm1-law-com"
        john_slugs = {
            User.objects.get(email=e).organization.slug
            for e in ("john.doe@gmail.com", "john-doe@yahoo.com")
        }
        assert john_slugs == {"john-doe", "john-doe-2"}
        n_public = User.objects.filter(email__startswith="solo").count() + 3
        assert Organization.objects.filter(backfill_key__startswith="email:").count() == n_public
        assert Organization.objects.filter(backfill_key__startswith="domain:").count() == len(
            FIRM_DOMAINS
        )


@pytest.mark.django_db
def test_backfill_assigns_everyone_and_a_second_run_changes_nothing(capsys):
    data = generate()
    call_command("backfill_organizations", "--batch-size", "500")
    out = capsys.readouterr().out
    assert "batch 1:" in out and "users/s" in out and "ETA" in out
    assert "Done: 2854 user(s) were assigned" in out
    assert_backfilled(data)
    before = snapshot()
    call_command("backfill_organizations", "--batch-size", "500")
    assert "Nothing to do" in capsys.readouterr().out
    assert snapshot() == before


@pytest.mark.django_db
def test_dry_run_writes_nothing_and_reports_true_counts(capsys):
    generate()
    before = snapshot()
    call_command("backfill_organizations", "--batch-size", "300", "--dry-run")
    out = capsys.readouterr().out
    assert "Dry run, nothing written: 2854 user(s) would be assigned" in out
    # 20 domains (firm0's counted once although its users span 10 batches) + 803 public
    assert "823 organization(s) and 2804 membership(s) would be created" in out
    assert snapshot() == before


@pytest.mark.django_db
def test_max_batches_stops_and_a_rerun_resumes(capsys):
    data = generate()
    call_command("backfill_organizations", "--batch-size", "400", "--max-batches", "2")
    assert "rerun to continue" in capsys.readouterr().out
    with cross_tenant(reason="test"):
        assert User.objects.filter(organization__isnull=True).count() == 3054 - 800 - 200
    call_command("backfill_organizations", "--batch-size", "400")
    assert_backfilled(data)


@pytest.mark.django_db
def test_an_existing_backfill_organization_gets_an_owner_only_if_it_has_none(capsys):
    ownerless = OrganizationFactory(slug="ownerless-test", backfill_key="domain:ownerless.test")
    owned = OrganizationFactory(slug="owned-test", backfill_key="domain:owned.test")
    boss = User.objects.create_user(email="boss@owned.test", organization=owned)
    with cross_tenant(reason="test set-up"):
        Membership.objects.create(organization=owned, user=boss, role=MembershipRole.OWNER)
    User.objects.bulk_create(
        [User(email="a@ownerless.test"), User(email="b@ownerless.test"), User(email="c@owned.test")]
    )
    call_command("backfill_organizations")
    assert "0 organization(s) and 3 membership(s) were created" in capsys.readouterr().out
    with cross_tenant(reason="test assertions"):
        roles = dict(Membership.objects.values_list("user__email", "role"))
        orgs = dict(User.objects.values_list("email", "organization_id"))
    assert roles == {
        "boss@owned.test": MembershipRole.OWNER,
        "a@ownerless.test": MembershipRole.OWNER,
        "b@ownerless.test": MembershipRole.MEMBER,
        "c@owned.test": MembershipRole.MEMBER,
    }
    assert orgs["a@ownerless.test"] == orgs["b@ownerless.test"] == ownerless.pk
    assert orgs["c@owned.test"] == owned.pk


@pytest.mark.django_db
def test_bad_arguments_exit_with_an_error():
    with pytest.raises(CommandError, match="batch-size"):
        call_command("backfill_organizations", "--batch-size", "0")


@pytest.mark.django_db
def test_the_service_raises_backfill_error_and_writes_nothing():
    generate(n_firm_users=10, n_public=5, n_assigned=0, n_with_membership=0)
    before = snapshot()
    with pytest.raises(BackfillError, match="batch size must be at least 1, not 0"):
        organizations_backfill(batch_size=0)
    with pytest.raises(BackfillError, match="max batches must be at least 1, not 0"):
        organizations_backfill(batch_size=10, max_batches=0)
    assert snapshot() == before


@pytest.mark.django_db
def test_free_slugs_suffixes_past_many_collisions():
    OrganizationFactory(slug="busy")
    for n in range(2, 30):
        OrganizationFactory(slug=f"busy-{n}")
    with connection.cursor() as cursor:
        assert _free_slugs(cursor, {"a": "busy", "b": "busy", "c": "calm"}) == {
            "a": "busy-30",
            "b": "busy-31",
            "c": "calm",
        }


def _subprocess_env():
    env = dict(os.environ, DATABASE_URL=subprocess_database_url(), PYTHONUNBUFFERED="1")
    env.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
    return env


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_batches_then_a_rerun_finishes_correctly():
    """A real process, SIGKILLed while it works through its batches: the committed batches
    stay, the one in flight is rolled back by PostgreSQL, and a rerun completes the job."""
    data = generate()
    total = 3054 - 200
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "backfill_organizations", "--batch-size", "10"],
        cwd=ROOT,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("batch 3:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    with cross_tenant(reason="test"):
        left = User.objects.filter(organization__isnull=True).count()
    assert 0 < left <= total - 30, "the kill should leave a partly done backfill"
    rerun = subprocess.run(
        [sys.executable, "manage.py", "backfill_organizations", "--batch-size", "500"],
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{left} user(s) without an organization" in rerun.stdout
    assert_backfilled(data)


@pytest.fixture
def organization_insert_trap(transactional_db):
    """A trigger (created as the login role, which owns the table) that raises on INSERT
    of an organization whose slug starts with ``boom``; dropped afterwards."""
    from tenancy.tests.dburl import owner_psycopg_connection

    with owner_psycopg_connection() as owner:
        owner.execute(
            "CREATE FUNCTION gl_test_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'test trap: refusing organization %', NEW.slug; END $$"
        )
        owner.execute(
            "CREATE TRIGGER gl_test_boom BEFORE INSERT ON tenancy_organization FOR EACH ROW "
            "WHEN (NEW.slug LIKE 'boom%') EXECUTE FUNCTION gl_test_boom()"
        )
        try:
            yield
        finally:
            owner.execute("DROP TRIGGER gl_test_boom ON tenancy_organization")
            owner.execute("DROP FUNCTION gl_test_boom()")


def test_a_database_error_exits_non_zero_keeps_done_batches_and_rolls_back_the_failing_one(
    organization_insert_trap,
):
    # batch 1 (10 users): ten firm domains; batch 2: gamma.test, then boom.test (trapped)
    User.objects.bulk_create(
        [User(email=f"u{i}@alpha{i}.test") for i in range(10)]
        + [User(email="g@gamma.test"), User(email="b@boom.test")]
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "backfill_organizations", "--batch-size", "10"],
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "backfill failed in batch 2 (users after id" in result.stderr, result.stderr
    assert "test trap: refusing organization boom-test" in result.stderr
    assert "The batch was rolled back. 10 user(s) were done in committed batches" in result.stderr
    assert "batch 1: 10/12 users" in result.stdout
    with cross_tenant(reason="test: what was committed"):
        done = dict(User.objects.values_list("email", "organization__slug"))
        assert all(done[f"u{i}@alpha{i}.test"] == f"alpha{i}-test" for i in range(10)), done
        assert done["g@gamma.test"] is None and done["b@boom.test"] is None
        # the failing batch's gamma organization was rolled back with it
        assert not Organization.objects.filter(slug__in=["gamma-test", "boom-test"]).exists()
        assert Membership.objects.count() == 10


@pytest.mark.django_db
def test_free_slugs_skips_the_slugs_of_other_keys_bases_and_of_existing_organizations():
    # "acme-2" is another key's base (given to it bare), "acme-3" an organization's slug:
    # both are skipped; "acme-02" is not "acme-2" and blocks nothing.
    for slug in ("acme", "acme-3", "acme-02"):
        OrganizationFactory(slug=slug)
    wanted = {"k1": "acme", "k2": "acme", "k3": "acme-2", "k4": "acme-2"}
    with connection.cursor() as cursor:
        assert _free_slugs(cursor, wanted) == {
            "k1": "acme-4",
            "k2": "acme-5",
            "k3": "acme-2",
            "k4": "acme-2-2",
        }


@pytest.mark.django_db
def test_staff_and_superusers_are_skipped_and_said_so(capsys):
    User.objects.create_superuser(email="root@firm-x.test", password="pw-long-enough")
    User.objects.create_user(email="ops@firm-x.test", password="pw-long-enough", is_staff=True)
    lawyer = User.objects.create_user(email="lawyer@firm-x.test")
    call_command("backfill_organizations")
    out = capsys.readouterr().out
    assert "Skipping 2 staff user(s) or superuser(s) without an organization" in out
    assert "Done: 1 user(s) were assigned" in out
    org = Organization.objects.get(backfill_key="domain:firm-x.test")
    assert list(Membership.objects.filter(organization=org).values_list("user__email", "role")) == [
        (lawyer.email, "owner")
    ]
    assert User.objects.filter(organization__isnull=True).count() == 2
    call_command("backfill_organizations")
    out = capsys.readouterr().out
    assert "Skipping 2 staff" in out and "Nothing to do" in out


@pytest.mark.django_db
def test_dry_run_lists_a_sample_of_what_it_would_create_with_counts(capsys):
    for n in range(12):
        User.objects.create_user(email=f"a{n}@firm{n:02d}.test")
    User.objects.create_user(email="b@firm00.test")
    before = snapshot()
    call_command("backfill_organizations", "--dry-run", "--batch-size", "5")
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = lines.index("Would create 12 organization(s); the first 10 by slug:")
    sample = lines[start + 1 : start + 11]
    assert sample[0] == (
        "  would create organization 'firm00-test' (domain:firm00.test): "
        "owner a0@firm00.test, 2 member(s) in all"
    )
    assert sample[9].startswith("  would create organization 'firm09-test'")
    assert not lines[start + 11].startswith("  would create")
    assert "12 organization(s) and 13 membership(s) would be created" in out
    assert snapshot() == before
