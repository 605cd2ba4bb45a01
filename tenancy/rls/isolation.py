"""The catalog check behind ``manage.py check_isolation``: is every tenant table protected?

Reads PostgreSQL's catalog (``pg_class``, ``pg_policy``, ``pg_constraint``,
``pg_roles``; PostgreSQL manual, chapter "System Catalogs"), not the models, so
it also catches a table created by raw SQL or by a migration that forgot
``TenantRowLevelSecurity``.
"""

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from tenancy.jobs import job_table_problems
from tenancy.rls import policies
from tenancy.rls.roles import RLS_DATABASE_DEFAULT

_TABLES_WITH_ORG = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner),
       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = %s)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
ORDER BY c.relname
"""

_TABLE_STATE = """
SELECT c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner),
       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = %s)
FROM pg_class c WHERE c.oid = to_regclass(%s)
"""

_UNIQUE_WITHOUT_ORG = """
SELECT c.conname FROM pg_constraint c
WHERE c.conrelid = to_regclass(%s) AND c.contype = 'u'
  AND NOT EXISTS (
    SELECT 1 FROM pg_attribute a
    WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) AND a.attname = 'organization_id')
UNION ALL
SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = to_regclass(%s) AND x.indisunique AND NOT x.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                  AND c.contype IN ('p', 'u', 'x'))
  AND NOT EXISTS (
    SELECT 1 FROM pg_attribute a
    WHERE a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) AND a.attname = 'organization_id')
"""

# The primary-key columns of each tenant table (``%s``: their quoted names), in key order;
# NULL for a table without one.
_PRIMARY_KEYS = """
SELECT to_regclass(t.name)::text, (SELECT array_agg(a.attname ORDER BY k.n) FROM pg_constraint c
                CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                WHERE c.conrelid = to_regclass(t.name) AND c.contype = 'p')
FROM unnest(%s::text[]) AS t(name) WHERE to_regclass(t.name) IS NOT NULL
"""

# Every foreign key that references a tenant table (``%s``: their quoted names): the
# referencing table, the constraint, the referenced table, the referencing columns, and
# whether organization_id is in it at the same position on both sides (what Citus needs
# between two distributed tables: "in the same ordinal in both tables").
_FOREIGN_KEYS_TO_TENANT_TABLES = """
SELECT c.conrelid::regclass::text, c.conname, c.confrelid::regclass::text,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             ORDER BY k.n),
       EXISTS (SELECT 1 FROM generate_subscripts(c.conkey, 1) AS i
               WHERE c.conkey[i] = (SELECT attnum FROM pg_attribute WHERE attrelid = c.conrelid
                                      AND attname = 'organization_id' AND NOT attisdropped)
                 AND c.confkey[i] = (SELECT attnum FROM pg_attribute WHERE attrelid = c.confrelid
                                       AND attname = 'organization_id'))
FROM pg_constraint c
WHERE c.contype = 'f'
  AND c.confrelid = ANY (ARRAY(SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)::oid[])
ORDER BY 1, 2
"""


def distribution_problems(cursor, entries: list) -> list[str]:
    """What keeps the tenant tables ``entries`` (``policies.TenantTable``) from being
    distributed by ``organization_id`` (Citus), as lines: a primary key without
    ``organization_id``, a foreign key between tenant tables that does not pair their
    ``organization_id`` columns (a single-column one), a foreign key from a table that is
    not a tenant table to one (reference and local tables cannot reference distributed
    tables), a tenant many-to-many through table (it has no ``organization_id``), and a
    unique constraint or index without ``organization_id`` (Citus: "Distributed relations
    cannot have UNIQUE ... constraints that do not include the partition column"). Reads
    the catalog only."""
    problems: list[str] = []
    tables = [e.table for e in entries if not e.through_parent]
    quoted = [policies._q(t) for t in tables]
    for entry in entries:
        if entry.through_parent:
            problems.append(
                f"table {entry.table}: a many-to-many through table of tenant table "
                f"{entry.through_parent} has no organization_id and cannot be distributed; "
                "use an explicit through model (a TenantModel)"
            )
    for table in tables:
        cursor.execute(_UNIQUE_WITHOUT_ORG, [policies._q(table)] * 2)
        for (name,) in cursor.fetchall():
            problems.append(
                f"table {table}: unique constraint {name} does not include organization_id"
            )
    cursor.execute(_PRIMARY_KEYS, [quoted])
    for table, columns in cursor.fetchall():
        if not columns or "organization_id" not in columns:
            shown = f"({', '.join(columns)})" if columns else "missing"
            problems.append(
                f"table {table}: primary key {shown} does not include organization_id "
                "(tenancy.keys.TenantPrimaryKeys)"
            )
    cursor.execute(_FOREIGN_KEYS_TO_TENANT_TABLES, [quoted])
    for source, name, target, columns, pairs_org in cursor.fetchall():
        if source not in tables:
            problems.append(
                f"table {source}: foreign key {name} ({', '.join(columns)}) -> {target}: only "
                "a tenant table may reference a tenant table"
            )
        elif not pairs_org:
            problems.append(
                f"table {source}: foreign key {name} ({', '.join(columns)}) -> {target} does "
                "not include organization_id (between tenant tables only the composite "
                "(organization_id, x_id) keys: tenancy.fields.TenantForeignKey)"
            )
    return problems


# (name, superuser, BYPASSRLS, member of a role that is either) of ``current_user`` (the
# role requests run as) or ``session_user`` (the login role, which RESET ROLE restores).
_ROLE_BYPASS = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       EXISTS (SELECT 1 FROM pg_roles o
               WHERE (o.rolsuper OR o.rolbypassrls) AND o.oid <> r.oid
                 AND pg_has_role(r.oid, o.oid, 'MEMBER'))
FROM pg_roles r WHERE r.rolname = {who}
"""


def isolation_problems(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Every isolation defect found, as human-readable lines (empty list: all good).

    Checks: each table with ``organization_id`` (except ``policies.EXEMPT_TABLES``) and each
    tenant many-to-many through table has row-level security ENABLEd, FORCEd and the
    ``tenant_isolation`` policy; the role this connection runs as (the app role) is not
    superuser, has no BYPASSRLS (nor inherits either) and owns no tenant table; unique
    constraints of tenant tables include ``organization_id``; every foreign key between
    tenant tables has its composite same-organization twin; the keys let Citus distribute
    the tenant tables by ``organization_id`` (``distribution_problems``); the database default of
    ``app.rls_enabled`` is ``'on'`` (``tenancy.rls.roles.RLS_DATABASE_DEFAULT``); the app
    role may use the job queue's tables (``tenancy.jobs.job_table_problems``; they are not
    tenant tables).
    """
    connection = connections[using]
    problems: list[str] = []
    entries = policies.tenant_tables(apps.get_models())
    with connection.cursor() as cursor:
        cursor.execute(_ROLE_BYPASS.format(who="current_user"))
        role, is_super, bypass, inherits = cursor.fetchone()
        expected_role = getattr(settings, "DATABASE_APP_ROLE", "")
        if expected_role and role != expected_role:
            problems.append(f"role: connected as {role!r}, expected the app role {expected_role!r}")
        if is_super:
            problems.append(f"role {role}: is a superuser (bypasses row-level security)")
        if bypass:
            problems.append(f"role {role}: has BYPASSRLS")
        if inherits:
            problems.append(f"role {role}: is a member of a superuser or BYPASSRLS role")

        cursor.execute(_TABLES_WITH_ORG, [policies.POLICY_NAME])
        tables = {row[0]: row[1:] for row in cursor.fetchall()}
        for entry in entries:
            if entry.through_parent:
                cursor.execute(_TABLE_STATE, [policies.POLICY_NAME, policies._q(entry.table)])
                row = cursor.fetchone()
                if row:
                    tables[entry.table] = row
        for table, (enabled, forced, owner, has_policy) in sorted(tables.items()):
            if table in policies.EXEMPT_TABLES:
                continue
            missing = [
                label
                for label, ok in (
                    ("ENABLE ROW LEVEL SECURITY", enabled),
                    ("FORCE ROW LEVEL SECURITY", forced),
                    (f"policy {policies.POLICY_NAME}", has_policy),
                )
                if not ok
            ]
            if missing:
                problems.append(f"table {table}: missing {', '.join(missing)}")
            if owner == role:
                problems.append(f"table {table}: owned by the app role {role}")

        problems += distribution_problems(cursor, entries)
        for entry in entries:
            if entry.through_parent:
                continue
            for column, target in entry.references:
                cursor.execute(
                    """SELECT 1 FROM pg_constraint c WHERE c.conrelid = to_regclass(%s)
                       AND c.contype = 'f' AND c.confrelid = to_regclass(%s)
                       AND array_length(c.conkey, 1) = 2
                       AND c.conkey @> ARRAY[
                         (SELECT attnum FROM pg_attribute WHERE attrelid = c.conrelid
                            AND attname = 'organization_id'),
                         (SELECT attnum FROM pg_attribute WHERE attrelid = c.conrelid
                            AND attname = %s)]::int2[]""",
                    [policies._q(entry.table), policies._q(target), column],
                )
                if cursor.fetchone() is None:
                    problems.append(
                        f"table {entry.table}: foreign key {column} -> {target} has no "
                        "composite (organization_id, id) same-organization constraint"
                    )

        cursor.execute(
            """SELECT s.setting FROM pg_db_role_setting d, unnest(d.setconfig) AS s(setting)
               WHERE d.setdatabase = (SELECT oid FROM pg_database
                                      WHERE datname = current_database())
                 AND d.setrole = 0 AND s.setting LIKE 'app.rls_enabled=%%'"""
        )
        row = cursor.fetchone()
        actual = row[0].split("=", 1)[1] if row else None
        if actual != RLS_DATABASE_DEFAULT:
            problems.append(
                f"database default app.rls_enabled is {actual!r}, expected "
                f"{RLS_DATABASE_DEFAULT!r} whatever RLS_ENABLED is (a session or Citus "
                "worker without the transaction's settings must enforce; run manage.py "
                "migrate)"
            )
    return problems + job_table_problems(using)


def isolation_warnings(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Findings that do not break isolation by themselves but weaken it (list of lines).

    One login (``DATABASE_OWNER_URL`` unset; ``tenancy.rls.roles``): the app logs in as
    another role (``session_user``) and ``SET ROLE``s to the app role, so a ``RESET ROLE``
    (or ``SET ROLE`` back) in any code path gets the login role back; worse when that role
    is a superuser, has BYPASSRLS or is a member of such a role (each is named). Expected
    in development only; with two logins (production, CI, the embedded database) the app
    logs in as the app role itself and there is nothing to warn about.
    ``check_isolation --strict`` turns these into failures (DEPLOY.md).
    """
    from tenancy.rls.roles import logs_in_as_app_role

    warnings: list[str] = []
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT session_user = current_user")
        if cursor.fetchone()[0]:
            return warnings  # the login role is the one isolation_problems checks
        cursor.execute(_ROLE_BYPASS.format(who="session_user"))
        role, is_super, bypass, inherits = cursor.fetchone()
    reasons = [
        label
        for label, flag in (
            ("is a superuser", is_super),
            ("has BYPASSRLS", bypass),
            ("is a member of a superuser or BYPASSRLS role", inherits),
        )
        if flag
    ]
    if not logs_in_as_app_role():
        warnings.append(
            f"DATABASE_OWNER_URL is unset: the app logs in as {role} and SET ROLEs to the "
            "app role (one login, development only); set DATABASE_URL to the app role's "
            "login and DATABASE_OWNER_URL to the owner's (DEPLOY.md, 'Database roles')"
        )
    if reasons:
        warnings.append(
            f"login role {role}: {', '.join(reasons)}; requests SET ROLE to the app role, "
            "but RESET ROLE would restore the bypass (log in as the app role in production)"
        )
    return warnings
