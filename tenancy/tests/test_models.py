import pytest
from django.db import IntegrityError, connection, transaction

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
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cursor.fetchall())


def test_no_tenant_table_has_an_index_on_organization_id_alone():
    """Every tenant table's primary key leads with organization_id ((organization_id, id);
    the idempotency keys' (organization_id, key)), so an index on the organization column
    alone (Django's default for the foreign key) would only be paid on every write; the
    membership's unique (organization_id, user_id) leads with it too."""
    from django.apps import apps

    from tenancy.rls import policies

    tables = [t.table for t in policies.tenant_tables(apps.get_models()) if not t.through_parent]
    assert "tenancy_membership" in tables and "cases_case" in tables
    for table in tables:
        indexes = _indexes(table)
        assert not [d for d in indexes.values() if d.endswith("(organization_id)")], table
        primary = indexes[f"{table}_pkey"]
        assert "(organization_id, " in primary, (table, primary)
    assert [d for d in _indexes("tenancy_membership").values() if "(organization_id, user_id)" in d]


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


@pytest.mark.parametrize(
    ("app", "migration", "indexes"),
    [
        (
            "tenancy",
            "0009",
            [
                "tenancy_membership_organization_id_8f49c887",
                "tenancy_invitation_organization_id_c4a918ea",
                "tenancy_organization_backfill_key_cd385804_like",
            ],
        ),
        (
            "billing",
            "0013",
            [
                "billing_meterreport_organization_id_72b352e6",
                "billing_usageaggregate_organization_id_b0fe19d5",
            ],
        ),
        (
            "cases",
            "0007",
            [
                "cases_client_organization_id_e93af0ed",
                "cases_case_organization_id_cb1292e0",
                "cases_document_organization_id_bba2b9cb",
            ],
        ),
    ],
)
def test_the_index_migrations_only_drop_indexes_concurrently(app, migration, indexes):
    """On live tables: no ACCESS EXCLUSIVE lock, the foreign keys and the unique
    constraint untouched (sqlmigrate prints what migrate would run)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sqlmigrate", app, migration, stdout=out)
    statements = [line for line in out.getvalue().splitlines() if line and line[:2] != "--"]
    assert statements == [f'DROP INDEX CONCURRENTLY IF EXISTS "{name}";' for name in indexes]
