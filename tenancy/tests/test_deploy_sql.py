"""DEPLOY.md's production SQL, ``migrate`` as a non-superuser owner, and reversible RLS.

One scratch database (and two scratch roles) per module, created by running the SQL
block of DEPLOY.md ("Production SQL") with the names replaced, then migrated by real
``manage.py`` subprocesses with production's two logins (``DATABASE_URL`` the app role,
``DATABASE_OWNER_URL`` the NOSUPERUSER owner, which ``migrate`` runs as). Dropped
(database and roles) at the end.

* the DEPLOY.md SQL is enough for ``migrate`` to succeed (it writes the database default
  ``app.rls_enabled = 'on'``), and ``check_isolation --strict`` passes as the app role;
* a second ``migrate`` runs no DDL on tables that are up to date (policy oids unchanged)
  and repairs only a table that drifted;
* the post-migrate step waits at most ``lock_timeout`` for a table lock and says so;
* without ``SET`` on the parameter, ``migrate`` skips ``ALTER DATABASE`` when the value
  is already ``'on'``, and otherwise (a default ``'off'`` left from before) fails with a
  message naming the GRANT;
* forwards -> backwards -> forwards of the RLS migrations: ``migrate billing 0003``
  leaves ``billing_events`` protected (0003 protects it), ``migrate cases 0003`` removes
  RLS from the cases tables and the backstop does not re-apply it.
"""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tenancy.rls.roles import owner_connect_kwargs
from tenancy.tests.dburl import subprocess_database_url

ROOT = Path(__file__).resolve().parents[2]


def deploy_sql_block() -> str:
    """The ```sql block under "### Production SQL" in DEPLOY.md."""
    text = (ROOT / "DEPLOY.md").read_text()
    section = text[text.index("### Production SQL") :]
    match = re.search(r"```sql\n(.*?)```", section, re.S)
    assert match, "DEPLOY.md has no ```sql block under 'Production SQL'"
    return match.group(1)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _superuser(dbname: str) -> psycopg.Connection:
    """The suite's owner login (the local superuser), to database ``dbname``."""
    owner = owner_connect_kwargs()
    return psycopg.connect(**{**owner, "dbname": dbname}, autocommit=True)


class Scratch:
    """The scratch database and roles, and ``manage.py`` as either role."""

    def __init__(self):
        suffix = uuid.uuid4().hex[:8]
        self.owner, self.app, self.db = (
            f"gl_owner_{suffix}",
            f"gl_app_{suffix}",
            f"gl_deploy_{suffix}",
        )
        self.password = uuid.uuid4().hex

    def run_deploy_sql(self):
        sql = deploy_sql_block()
        sql = sql.replace("goldleaves_owner", self.owner).replace("goldleaves_app", self.app)
        sql = re.sub(r"\bgoldleaves\b", self.db, sql).replace("'...'", f"'{self.password}'")
        before, after = sql.split(f"\\c {self.db}\n")
        with _superuser("postgres") as conn:
            for statement in _statements(before):
                conn.execute(statement)
        with _superuser(self.db) as conn:
            for statement in _statements(after):
                conn.execute(statement)

    def manage(self, *args, rls="false", check=True):
        """``manage.py *args`` with production's two logins: ``DATABASE_URL`` the app role,
        ``DATABASE_OWNER_URL`` the NOSUPERUSER owner (``migrate`` runs as it)."""
        env = dict(
            os.environ,
            DATABASE_URL=subprocess_database_url(
                user=self.app, name=self.db, password=self.password
            ),
            DATABASE_OWNER_URL=subprocess_database_url(
                user=self.owner, name=self.db, password=self.password
            ),
            DATABASE_APP_ROLE=self.app,
            RLS_ENABLED=rls,
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def query(self, sql, params=()):
        with _superuser(self.db) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql):
        with _superuser(self.db) as conn:
            conn.execute(sql)

    def drop(self):
        with _superuser("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            for role in (self.owner, self.app):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                    # DROP OWNED also revokes the cluster-wide GRANT SET ON PARAMETER
                    conn.execute(f'DROP OWNED BY "{role}"')
                    conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture(scope="module")
def scratch():
    db = Scratch()
    try:
        db.run_deploy_sql()
        result = db.manage("migrate", "--noinput")
        assert "Row-level security:" in result.stdout
        yield db
    finally:
        db.drop()


def _rls_state(scratch, table):
    """(ENABLE, FORCE, {policy name: oid})."""
    rows = scratch.query(
        "SELECT c.relrowsecurity, c.relforcerowsecurity, p.polname, p.oid FROM pg_class c "
        "LEFT JOIN pg_policy p ON p.polrelid = c.oid WHERE c.oid = to_regclass(%s)",
        [table],
    )
    if not rows:
        return None
    return rows[0][0], rows[0][1], {r[2]: r[3] for r in rows if r[2]}


def _policy_oids(scratch) -> dict:
    return {
        (t, name): oid
        for t, name, oid in scratch.query(
            "SELECT polrelid::regclass::text, polname, oid FROM pg_policy ORDER BY 1, 2"
        )
    }


def test_deploy_sql_lets_a_non_superuser_owner_migrate(scratch):
    assert scratch.query(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [scratch.owner]
    ) == [(False, False)]
    assert scratch.query(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [scratch.db]
    ) == [(scratch.owner,)]
    settings = scratch.query(
        "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setdatabase = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) AND setrole = 0"
    )
    assert ("app.rls_enabled=on",) in settings  # 'on' whatever RLS_ENABLED (fail closed)
    # the tables belong to the owner, and the app role (its own login) finds no gap
    assert scratch.query(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'cases_case'"
    ) == [(scratch.owner,)]
    result = scratch.manage("check_isolation", "--strict", rls="true")
    assert "every tenant table is isolated" in result.stdout


def test_a_second_migrate_changes_nothing_and_repairs_only_what_drifted(scratch):
    before = _policy_oids(scratch)
    assert ("cases_client", "tenant_isolation") in before
    result = scratch.manage("migrate", "--noinput")
    assert "Row-level security: 0 change(s)" in result.stdout, result.stdout
    assert _policy_oids(scratch) == before  # no DROP/CREATE POLICY on up-to-date tables

    # Drift on one table: its policy is recreated (new oid), no other table is touched.
    scratch.execute("DROP POLICY tenant_isolation ON cases_client")
    result = scratch.manage("migrate", "--noinput", "-v", "2")
    assert "rls cases_client" in result.stdout
    assert result.stdout.count("  rls ") == 1, result.stdout
    after = _policy_oids(scratch)
    assert after.keys() == before.keys()
    assert {k for k in before if before[k] != after[k]} == {("cases_client", "tenant_isolation")}


def test_the_post_migrate_step_gives_up_on_a_locked_table_with_a_clear_message(scratch):
    scratch.execute("ALTER TABLE cases_document NO FORCE ROW LEVEL SECURITY")
    with _superuser(scratch.db) as holder:
        holder.autocommit = False
        holder.execute("LOCK TABLE cases_document IN ACCESS SHARE MODE")
        result = scratch.manage("migrate", "--noinput", check=False)
        holder.rollback()
    assert result.returncode != 0
    assert "cases_document could not be locked within 5s" in result.stderr, result.stderr
    assert _rls_state(scratch, "cases_document")[1] is False  # nothing half-done
    scratch.manage("migrate", "--noinput")
    assert _rls_state(scratch, "cases_document")[:2] == (True, True)


def _database_settings(scratch):
    return scratch.query(
        "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setdatabase = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) AND setrole = 0"
    )


def test_alter_database_is_skipped_when_it_matches_and_explained_when_refused(scratch):
    scratch.execute(f'REVOKE SET ON PARAMETER app.rls_enabled FROM "{scratch.owner}"')
    try:
        for rls in ("false", "true"):  # already 'on' either way: no ALTER
            scratch.manage("migrate", "--noinput", rls=rls)
        # a database whose default is 'off' (what migrate wrote for RLS_ENABLED=false before)
        scratch.execute(f"ALTER DATABASE \"{scratch.db}\" SET app.rls_enabled = 'off'")
        refused = scratch.manage("migrate", "--noinput", rls="false", check=False)
        assert refused.returncode != 0
        assert "GRANT SET ON PARAMETER app.rls_enabled" in refused.stderr, refused.stderr
        assert "may not set the database default app.rls_enabled='on'" in refused.stderr
    finally:
        scratch.execute(f'GRANT SET ON PARAMETER app.rls_enabled TO "{scratch.owner}"')
    scratch.manage("migrate", "--noinput", rls="false")
    assert ("app.rls_enabled=on",) in _database_settings(scratch)


def test_rls_migrations_go_forwards_backwards_and_forwards_again(scratch):
    # billing 0004 created the meter report tables and re-ran the operation; reversing it
    # must leave billing_events as 0003 protected it.
    scratch.manage("migrate", "billing", "0003", "--noinput")
    assert _rls_state(scratch, "billing_usageaggregate") is None
    enabled, forced, policies = _rls_state(scratch, "billing_events")
    assert (enabled, forced) == (True, True) and "tenant_isolation" in policies

    # cases 0004 is the operation that protected the cases tables: its reverse removes it,
    # and the post-migrate backstop does not put it back.
    scratch.manage("migrate", "cases", "0003", "--noinput")
    for table in ("cases_client", "cases_case", "cases_document"):
        assert _rls_state(scratch, table) == (False, False, {}), table
    assert not scratch.query(
        "SELECT conname FROM pg_constraint WHERE conname LIKE 'cases_%%same_org_fk'"
    )
    assert _rls_state(scratch, "billing_events")[:2] == (True, True)

    scratch.manage("migrate", "--noinput")
    for table in ("cases_client", "cases_case", "billing_events", "billing_usageaggregate"):
        enabled, forced, policies = _rls_state(scratch, table)
        assert (enabled, forced) == (True, True) and "tenant_isolation" in policies, table
    result = scratch.manage("check_isolation", "--strict", rls="true")
    assert "every tenant table is isolated" in result.stdout
