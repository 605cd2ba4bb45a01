"""The catalog check behind ``manage.py check_isolation``: is every tenant table protected?

Reads PostgreSQL's catalog (``pg_class``, ``pg_policy``, ``pg_constraint``,
``pg_roles``; PostgreSQL manual, chapter "System Catalogs"), not the models, so
it also catches a table created by raw SQL or by a migration that forgot
``TenantRowLevelSecurity``.
"""

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from tenancy.rls import policies

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
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
  AND NOT EXISTS (
    SELECT 1 FROM pg_attribute a
    WHERE a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) AND a.attname = 'organization_id')
"""

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
    tenant tables has its composite same-organization twin; the database default of
    ``app.rls_enabled`` matches ``RLS_ENABLED``.
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

        for entry in entries:
            if entry.through_parent:
                continue
            cursor.execute(_UNIQUE_WITHOUT_ORG, [policies._q(entry.table)] * 2)
            for (name,) in cursor.fetchall():
                problems.append(
                    f"table {entry.table}: unique constraint {name} "
                    "does not include organization_id"
                )
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
        expected = "on" if settings.RLS_ENABLED else "off"
        actual = row[0].split("=", 1)[1] if row else None
        if actual != expected:
            problems.append(
                f"database default app.rls_enabled is {actual!r}, "
                f"but RLS_ENABLED={settings.RLS_ENABLED} "
                f"expects {expected!r} (run manage.py migrate)"
            )
    return problems


def isolation_warnings(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Findings that do not break isolation by themselves but weaken it (list of lines).

    The login role (``session_user``): when it is a superuser, has BYPASSRLS or is a
    member of such a role while requests ``SET ROLE`` to the app role, a ``RESET ROLE``
    (or ``SET ROLE`` back) in any code path restores the bypass. Expected in development
    and CI (they log in as the local superuser and ``SET ROLE`` the app role); in
    production the app servers log in as the app role itself, so
    ``check_isolation --strict`` turns these into failures there (DEPLOY.md).
    """
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
    if reasons:
        warnings.append(
            f"login role {role}: {', '.join(reasons)}; requests SET ROLE to the app role, "
            "but RESET ROLE would restore the bypass (log in as the app role in production)"
        )
    return warnings
