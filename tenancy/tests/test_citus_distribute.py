"""``manage.py citus_distribute``: the plan it prints, its refusal without Citus, and how it
reads what Citus already did.

There is no Citus here. The plan is read from the catalog, so the dry run is the real one;
for "already distributed" a transaction-local stand-in of Citus's ``pg_dist_partition``
(a TEMP table, found before any other relation of that name) and of
``column_to_column_name`` is made, and rolled back with the test.
"""

import re
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from tenancy import citus
from tenancy.rls import policies, roles

TENANT = sorted(e.table for e in policies.tenant_tables(apps.get_models()) if not e.through_parent)
LINE = re.compile(r"^  (reference|distributed) +(\w+): would run (SELECT .*);$")


def _dry_run(*args) -> tuple[list[tuple[str, str, str]], str]:
    out = StringIO()
    call_command("citus_distribute", "--dry-run", *args, stdout=out)
    text = out.getvalue()
    return [m.groups() for line in text.splitlines() if (m := LINE.match(line))], text


def _foreign_keys() -> set[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(citus._FOREIGN_KEYS)
        return set(cursor.fetchall())


def test_the_dry_run_prints_the_whole_plan_reference_tables_first_parents_first(db):
    steps, text = _dry_run("--shard-count", "16")
    kinds = [kind for kind, _, _ in steps]
    tables = [table for _, table, _ in steps]
    assert kinds == sorted(kinds, key=["reference", "distributed"].index)  # references first
    assert sorted(t for k, t, _ in steps if k == "distributed") == TENANT
    assert {"tenancy_organization", "tenancy_user"} <= {t for k, t, _ in steps if k == "reference"}
    # every table linked by a foreign key to users or organizations is a reference table
    assert {"auth_group", "auth_permission", "django_content_type", "tenancy_user_groups"} <= {
        t for k, t, _ in steps if k == "reference"
    }
    for referencing, referenced in _foreign_keys():
        if referencing in tables and referenced in tables:
            assert tables.index(referenced) < tables.index(referencing), (referencing, referenced)
    anchor, *others = [(t, sql) for k, t, sql in steps if k == "distributed"]
    assert anchor[1] == (
        f"""SELECT create_distributed_table('"{anchor[0]}"', 'organization_id', """
        "colocate_with => 'none', shard_count => 16)"
    )
    for table, sql in others:
        assert sql == (
            f"""SELECT create_distributed_table('"{table}"', 'organization_id', """
            f"""colocate_with => '"{anchor[0]}"')"""
        )
    assert all(
        sql == f"""SELECT create_reference_table('"{t}"')"""
        for k, t, sql in steps
        if k == "reference"
    )
    assert f"Dry run: would run {len(steps)} statement(s); 0 table(s) already done." in text
    assert "PostgreSQL without the citus extension" in text


def test_without_a_shard_count_the_first_table_joins_citus_default_group(db):
    steps, _ = _dry_run()
    first = next(sql for kind, _, sql in steps if kind == "distributed")
    assert first.endswith("'organization_id', colocate_with => 'default')")


def test_without_citus_it_refuses_to_run_and_runs_nothing(db):
    with pytest.raises(CommandError, match="has no citus extension") as refused:
        call_command("citus_distribute", stdout=StringIO())
    assert "nothing was run" in str(refused.value)
    with pytest.raises(CommandError, match="positive"):
        call_command("citus_distribute", "--dry-run", "--shard-count", "0")


@pytest.fixture
def owner_db(db):
    """A second connection, logged in as the owner (``tenancy.rls.roles.owner_alias``), in
    a transaction rolled back after the test: the app role may not create functions, and
    the test's own connection logs in as the app role and cannot leave it."""
    with roles.owner_alias() as owner:
        with transaction.atomic(using=owner.alias):
            yield owner
            transaction.set_rollback(True, using=owner.alias)


@pytest.fixture
def fake_citus_catalog(owner_db, monkeypatch):
    """``pg_dist_partition`` and ``column_to_column_name`` as Citus has them, in the owner
    connection's transaction only (``owner_db``), which then runs as the app role (``SET
    LOCAL ROLE``), as the command does; the tests read the plan on that connection."""
    monkeypatch.setattr(citus, "uses_citus", lambda connection=None: True)
    with owner_db.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION public.column_to_column_name(regclass, text) RETURNS text "
            "LANGUAGE sql AS $$ SELECT $2 $$"
        )
        cursor.execute(
            "CREATE TEMP TABLE pg_dist_partition (logicalrelid regclass, partmethod char, "
            "repmodel char, colocationid int, partkey text) ON COMMIT DROP"
        )
        role = roles.app_role()
        cursor.execute(f'GRANT ALL ON pg_dist_partition TO "{role}"')
        cursor.execute(f'SET LOCAL ROLE "{role}"')

    def mark(table, method, repmodel, colocation=1, column="organization_id"):
        with owner_db.cursor() as cursor:
            cursor.execute(
                "INSERT INTO pg_dist_partition VALUES (%s::regclass, %s, %s, %s, %s)",
                [table, method, repmodel, colocation, column],
            )

    return mark


def test_what_pg_dist_partition_has_is_skipped_so_a_second_run_resumes(
    fake_citus_catalog, owner_db
):
    plan = citus.distribution_plan(owner_db)
    anchor = next(s.table for s in plan.steps if s.kind == "distributed")
    fake_citus_catalog("tenancy_organization", "n", "t", 0)
    fake_citus_catalog(anchor, "h", "s")
    plan = citus.distribution_plan(owner_db, shard_count=8)
    done = {s.table: s.done for s in plan.steps if s.done}
    assert done == {
        "tenancy_organization": "already a reference table",
        anchor: "already distributed by organization_id",
    }
    assert plan.problems == []
    assert len(plan.pending) == len(plan.steps) - 2
    assert any("keeps its shard count" in note for note in plan.notes)


def test_a_table_distributed_the_wrong_way_is_refused_not_guessed(fake_citus_catalog, owner_db):
    fake_citus_catalog("cases_client", "h", "s", column="id")
    fake_citus_catalog("tenancy_user", "h", "s")
    fake_citus_catalog("cases_case", "n", "t", 0)
    problems = citus.distribution_plan(owner_db).problems
    assert "table cases_client: distributed by id, not organization_id" in problems
    assert "table tenancy_user: distributed, but must be a reference table" in problems
    assert "table cases_case: a reference table, but a tenant table" in problems
    with pytest.raises(CommandError, match="3 problem"):
        call_command(
            "citus_distribute",
            "--dry-run",
            "--database",
            owner_db.alias,
            stdout=StringIO(),
            stderr=StringIO(),
        )
