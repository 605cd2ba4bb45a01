"""Row-level security, the checks and the migrations: ``check_isolation`` naming each
missing piece (a table without policies, a unique key without ``organization_id``, a role
that could bypass), the login and app roles, and the RLS migration operations
(``sqlmigrate``, reverse, the backstop, grants to the app role on ``migrate``).

The policies themselves, table by table, are tested in ``test_rls.py``.
"""

import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from tenancy.rls import RowLevelSecurityError, operations, policies, roles
from tenancy.rls.isolation import isolation_problems, isolation_warnings
from tenancy.tests.dburl import owner_psycopg_connection

pytestmark = pytest.mark.rls_raw


def _owner_conn():
    """A separate autocommit psycopg connection as the login (owner) role, for DDL the
    app role may not run; closed after the test. The body of both fixtures below."""
    with owner_psycopg_connection() as conn:
        yield conn


@pytest.fixture
def owner_conn(db):
    """``_owner_conn`` for a test in the usual wrapping (rolled-back) transaction."""
    yield from _owner_conn()


def test_check_isolation_names_a_table_without_rls_and_a_unique_without_org(owner_conn):
    owner_conn.execute(
        "CREATE TABLE leaky_notes (id bigint PRIMARY KEY, organization_id uuid NOT NULL,"
        " slug text UNIQUE)"
    )
    owner_conn.execute("GRANT SELECT ON leaky_notes TO goldleaves_app")
    try:
        problems = isolation_problems()
        assert any(
            p.startswith(
                "table leaky_notes: missing ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL"
                " SECURITY, policy tenant_isolation"
            )
            for p in problems
        ), problems
        with pytest.raises(CommandError, match="problem"):
            call_command("check_isolation")
    finally:
        owner_conn.execute("DROP TABLE leaky_notes")


def test_check_isolation_flags_a_connection_that_is_not_the_app_role(db, settings):
    settings.DATABASE_APP_ROLE = "someone_else"
    assert any("expected the app role" in p for p in isolation_problems())


@pytest.fixture
def scratch_role(owner_conn, settings):
    """Create a scratch role with the given attributes and ``SET LOCAL ROLE`` to it on a
    second connection logged in as the owner (``roles.owner_alias``, in a transaction
    rolled back after the test): the test's own connection logs in as the app role and
    may not switch. ``scratch_role.alias`` names that connection; the roles are dropped
    after."""
    created = []
    with roles.owner_alias() as owner, transaction.atomic(using=owner.alias):

        def make(attributes: str, member_of: str | None = None) -> str:
            name = f"gl_scratch_{len(created)}_{uuid.uuid4().hex[:6]}"
            owner_conn.execute(f"CREATE ROLE {name} NOLOGIN {attributes}")
            created.append(name)
            if member_of:
                owner_conn.execute(f"GRANT {member_of} TO {name}")
            settings.DATABASE_APP_ROLE = name
            with owner.cursor() as cursor:
                cursor.execute(f"SET LOCAL ROLE {name}")
            return name

        make.alias = owner.alias
        yield make
        transaction.set_rollback(True, using=owner.alias)
    for name in reversed(created):
        owner_conn.execute(f"DROP ROLE {name}")


@pytest.mark.parametrize(
    ("attributes", "member_of", "expected"),
    [
        ("NOSUPERUSER BYPASSRLS", None, "has BYPASSRLS"),
        ("SUPERUSER", None, "is a superuser (bypasses row-level security)"),
        ("NOSUPERUSER NOBYPASSRLS INHERIT", "bypass", "is a member of a superuser or BYPASSRLS"),
    ],
)
def test_check_isolation_flags_an_app_role_that_could_bypass(
    scratch_role, attributes, member_of, expected
):
    if member_of:
        member_of = scratch_role("NOSUPERUSER BYPASSRLS")
    role = scratch_role(attributes, member_of)
    problems = isolation_problems(scratch_role.alias)
    assert f"role {role}: {expected}" in " | ".join(problems), problems
    assert not any("expected the app role" in p for p in problems)


def test_check_isolation_passes_for_a_plain_scratch_role(scratch_role):
    """The control for the test above: the same set-up without the bypass is clean."""
    role = scratch_role("NOSUPERUSER NOBYPASSRLS")
    problems = isolation_problems(scratch_role.alias)
    assert not [p for p in problems if p.startswith(("role", f"role {role}"))]


@pytest.mark.parametrize(
    ("setup", "missing"),
    [
        ("ENABLE", "FORCE ROW LEVEL SECURITY, policy tenant_isolation"),
        ("ENABLE FORCE", "policy tenant_isolation"),
        ("ENABLE POLICY", "FORCE ROW LEVEL SECURITY"),
        ("FORCE POLICY", "ENABLE ROW LEVEL SECURITY"),
    ],
)
def test_check_isolation_names_each_missing_piece_alone(owner_conn, setup, missing):
    owner_conn.execute(
        "CREATE TABLE leaky_parts (id bigint PRIMARY KEY, organization_id uuid NOT NULL)"
    )
    try:
        if "ENABLE" in setup:
            owner_conn.execute("ALTER TABLE leaky_parts ENABLE ROW LEVEL SECURITY")
        if "FORCE" in setup:
            owner_conn.execute("ALTER TABLE leaky_parts FORCE ROW LEVEL SECURITY")
        if "POLICY" in setup:
            owner_conn.execute(
                policies.Policy(
                    policies.POLICY_NAME, "ALL", policies.POLICY_PREDICATE, None
                ).create_sql("leaky_parts")
            )
        problems = [p for p in isolation_problems() if "leaky_parts" in p]
        assert problems == [f"table leaky_parts: missing {missing}"]
    finally:
        owner_conn.execute("DROP TABLE leaky_parts")


def test_the_suite_logs_in_as_the_app_role_and_reset_role_cannot_leave_it(db, capsys):
    """Two logins (DATABASE_OWNER_URL; CI, the embedded database): requests log in as the
    app role itself, so RESET ROLE is a no-op and check_isolation --strict passes."""
    assert roles.logs_in_as_app_role(), "set DATABASE_OWNER_URL (README, 'Set-up')"
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute(
            "SELECT session_user, current_user, rolsuper, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (roles.app_role(), roles.app_role(), False, False)
    assert isolation_warnings() == []
    call_command("check_isolation", "--strict")
    assert "warning" not in capsys.readouterr().err


def test_one_login_is_a_warning_and_a_failure_if_strict(db, settings, capsys):
    """One login (DATABASE_OWNER_URL unset): the app logs in as the superuser and SET ROLEs
    to the app role, so RESET ROLE would restore the bypass. Simulated on an owner
    connection that SET ROLEs: a warning by default, a failure with --strict."""
    with roles.owner_alias() as owner, transaction.atomic(using=owner.alias):
        settings.DATABASE_OWNER = {}  # after owner_alias() has logged in as the owner
        with owner.cursor() as cursor:
            cursor.execute(f'SET LOCAL ROLE "{roles.app_role()}"')
            cursor.execute(
                "SELECT session_user <> current_user, rolsuper FROM pg_roles "
                "WHERE rolname = session_user"
            )
            assert cursor.fetchone() == (True, True)
        warnings = isolation_warnings(owner.alias)
        assert len(warnings) == 2, warnings
        assert "DATABASE_OWNER_URL is unset" in warnings[0]
        assert "RESET ROLE would restore the bypass" in warnings[1]
        call_command("check_isolation", "--database", owner.alias)
        assert "warning: login role" in capsys.readouterr().err
        with pytest.raises(CommandError, match="2 problem"):
            call_command("check_isolation", "--database", owner.alias, "--strict")
        assert "(strict) DATABASE_OWNER_URL is unset" in capsys.readouterr().err
        transaction.set_rollback(True, using=owner.alias)


def _policy_oids():
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid, polrelid::regclass::text, polname FROM pg_policy")
        return sorted(cursor.fetchall())


def test_sqlmigrate_prints_the_rls_sql_and_runs_nothing(db, capsys):
    before = _policy_oids()
    call_command("sqlmigrate", "cases", "0004")
    out = capsys.readouterr().out
    assert 'ALTER TABLE "cases_client" FORCE ROW LEVEL SECURITY;' in out
    assert 'CREATE POLICY tenant_isolation ON "cases_case" FOR ALL USING' in out
    assert "cases_case_client_id_same_org_fk" in out
    assert _policy_oids() == before


def test_sqlmigrate_backwards_of_a_later_rls_migration_keeps_the_earlier_tables(db, capsys):
    """billing 0004 re-runs the operation over billing_events, which 0003 protected: its
    reverse removes RLS only from the tables 0004 created."""
    call_command("sqlmigrate", "billing", "0004", "--backwards")
    out = capsys.readouterr().out
    assert 'ALTER TABLE "billing_usageaggregate" DISABLE ROW LEVEL SECURITY;' in out
    assert 'ALTER TABLE "billing_meterreport" DISABLE ROW LEVEL SECURITY;' in out
    assert 'DROP CONSTRAINT IF EXISTS "billing_events_usage_aggregate_id_same_org_fk"' in out
    assert 'ALTER TABLE "billing_events" DISABLE' not in out
    assert 'DROP POLICY IF EXISTS tenant_isolation ON "billing_events"' not in out
    call_command("sqlmigrate", "cases", "0004", "--backwards")
    assert 'ALTER TABLE "cases_client" DISABLE ROW LEVEL SECURITY;' in capsys.readouterr().out


def test_reverse_of_an_rls_operation_whose_migration_is_unknown_strips_nothing(db):
    """Fail closed: an operation found in no migration cannot tell which tables an earlier
    migration protected, so its reverse raises and emits no SQL, rather than treating
    every current tenant table as its own and stripping their row-level security."""
    from django.db.migrations.exceptions import IrreversibleError
    from django.db.migrations.loader import MigrationLoader

    state = MigrationLoader(connection).project_state(("billing", "0004_stripe_meter_reports"))
    assert operations.TenantRowLevelSecurity._entries("billing", state)  # something to strip
    before = _policy_oids()
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        with pytest.raises(IrreversibleError, match="refuses to remove row-level security"):
            operations.TenantRowLevelSecurity().database_backwards("billing", editor, state, state)
    assert editor.collected_sql == []
    assert _policy_oids() == before


def test_the_backstop_changes_nothing_on_up_to_date_tables(db):
    """``policies.sync_tables`` (migrate's post-migrate step) on the migrated test database:
    only catalog reads and the rolled-back TEMP probe, no DDL on a real table."""
    executed = []

    def capture(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    before = _policy_oids()
    with connection.execute_wrapper(capture):
        done = policies.sync_tables(connection, operations.protected_tables(connection))
    assert done == []
    ddl = [
        sql
        for sql in executed
        if sql.lstrip().upper().startswith(("ALTER", "DROP", "CREATE", "DO"))
        and "TEMP" not in sql
        and "pg_temp." not in sql
    ]
    assert ddl == []
    assert any("CREATE TEMP TABLE" in sql for sql in executed)  # the probe did run
    assert _policy_oids() == before


def test_check_isolation_flags_a_missing_policy_and_a_unique_without_org(owner_conn):
    owner_conn.execute("DROP POLICY tenant_isolation ON cases_client")
    owner_conn.execute("ALTER TABLE cases_client ADD CONSTRAINT client_name_uniq UNIQUE (name)")
    try:
        problems = isolation_problems()
        assert "table cases_client: missing policy tenant_isolation" in problems
        assert (
            "table cases_client: unique constraint client_name_uniq does not include "
            "organization_id" in problems
        )
    finally:
        owner_conn.execute("ALTER TABLE cases_client DROP CONSTRAINT client_name_uniq")
        with owner_conn.cursor() as cursor:
            for statement in policies.enable_sql(policies.TenantTable("cases_client")):
                cursor.execute(statement)


@pytest.fixture
def owner_conn_committed(transactional_db):
    """``owner_conn`` for a test whose own writes commit (the GRANT must be visible to
    the separate owner connection that drops the table afterwards, without a lock wait)."""
    yield from _owner_conn()


def test_migrate_with_an_app_label_grants_the_app_role_the_new_tables(owner_conn_committed):
    # A table the owner created (as a migration of one app would) is out of the app
    # role's reach until migrate grants it; `migrate <app>` used to skip the grant.
    owner_conn_committed.execute("CREATE TABLE granted_later (id bigint PRIMARY KEY)")
    try:

        def app_role_can_read():
            row = owner_conn_committed.execute(
                "SELECT has_table_privilege('goldleaves_app', 'granted_later', 'SELECT')"
            ).fetchone()
            return row[0]

        assert not app_role_can_read()
        call_command("migrate", "cases", verbosity=0)
        assert app_role_can_read()
    finally:
        owner_conn_committed.execute("DROP TABLE granted_later")


def test_owner_connection_refuses_to_switch_roles_inside_a_transaction(db):
    # Library code raises the domain error; migrate and flush turn it into a CommandError.
    with pytest.raises(RowLevelSecurityError, match="inside a transaction"):
        with roles.owner_connection():
            pass
