import pytest
from django.db import IntegrityError, transaction

from tenancy.models import User
from tenancy.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_email_is_unique_case_insensitively():
    UserFactory(email="A@x.test")
    with pytest.raises(IntegrityError, match="tenancy_user_email_ci_unique"):
        with transaction.atomic():
            User.objects.create_user(email="a@x.test", password="pw-123456789")
    assert User.objects.filter(email__iexact="a@x.test").count() == 1
    assert User.objects.get_by_natural_key("a@X.TEST").email == "A@x.test"


def test_a_lookup_by_email_is_an_index_scan_of_the_case_insensitive_key():
    """``email__iexact`` (login, invitations, onboarding) compares ``LOWER(email)``, the
    expression of ``tenancy_user_email_ci_unique``, so the index serves it; Django's own
    ``UPPER(email)`` comparison could only scan every user. ``enable_seqscan = off``:
    with a handful of rows the planner would scan the table anyway."""
    from django.db import connection

    UserFactory(email="Lookup.Case@Example.test")
    by_email = User.objects.filter(email__iexact="lookup.case@EXAMPLE.TEST")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        plan = by_email.explain()
    assert "tenancy_user_email_ci_unique" in plan, plan
    assert by_email.get().email == "Lookup.Case@Example.test"
    assert User.objects.filter(email__iexact="lookup.case@example.test.").count() == 0


def _indexes(table: str) -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cursor.fetchall())


def test_membership_lookups_by_organization_use_the_keys_that_lead_with_it():
    """No single-column index on tenancy_membership.organization_id: the unique
    (organization_id, user_id) and the primary key lead with it (a third index would be
    paid on every membership written)."""
    definitions = _indexes("tenancy_membership").values()
    assert not [d for d in definitions if d.endswith("(organization_id)")]
    assert [d for d in definitions if d.endswith("(organization_id, user_id)")]
    assert [d for d in definitions if d.endswith("(organization_id, id)")]


def test_backfill_key_is_unique_without_a_pattern_index():
    from tenancy.models import Organization

    assert not [
        d
        for d in _indexes("tenancy_organization").values()
        if "backfill_key" in d and "pattern_ops" in d
    ]
    Organization.objects.create(name="A", slug="a-key", backfill_key="domain:a.test")
    with pytest.raises(IntegrityError, match="tenancy_organization_backfill_key_key"):
        with transaction.atomic():
            Organization.objects.create(name="B", slug="b-key", backfill_key="domain:a.test")
    Organization.objects.create(name="C", slug="c-key")  # NULLs never collide
    Organization.objects.create(name="D", slug="d-key")


def test_migration_0009_only_drops_the_two_indexes_concurrently():
    """On live tables: no ACCESS EXCLUSIVE lock, the foreign key and the unique constraint
    untouched (sqlmigrate prints what migrate would run)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sqlmigrate", "tenancy", "0009", stdout=out)
    statements = [
        line for line in out.getvalue().splitlines() if line and not line.startswith("--")
    ]
    assert statements == [
        'DROP INDEX CONCURRENTLY IF EXISTS "tenancy_membership_organization_id_8f49c887";',
        'DROP INDEX CONCURRENTLY IF EXISTS "tenancy_organization_backfill_key_cd385804_like";',
    ]
