"""Database roles: requests run as the app role, migrations as the owner.

* The **owner** is the role ``DATABASE_URL`` logs in as when running
  ``migrate`` / ``flush`` (in development and CI: the local superuser; in
  production: the schema owner, see DEPLOY.md). It owns the tables.
* The **app role** (``DATABASE_APP_ROLE``, default ``goldleaves_app``) is not a
  superuser, owns nothing and has no BYPASSRLS, so PostgreSQL applies every
  row-level-security policy to it (FORCE covers the owner as well). Every
  connection of the ``default`` alias switches to it with ``SET ROLE`` right
  after connecting (``connection_created``), except while ``owner_connection``
  is active. In production ``DATABASE_URL`` logs in as the app role itself.
* The one cross-tenant path is ``tenancy.context.cross_tenant`` (grep for it).

``ensure_app_role`` (called by ``migrate``) creates the app role when the owner
may (``CREATEROLE``: the embedded database, CI), grants it DML on every table
and sequence, and writes ``app.rls_enabled`` as the database default from
``RLS_ENABLED``, which is what makes queries with no tenant context fail closed.
"""

import contextlib

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.signals import connection_created

from tenancy.rls import RowLevelSecurityError

_owner_mode = {"on": False}


def app_role() -> str:
    """The app role's name (``DATABASE_APP_ROLE``), or ``''`` to stay the login role."""
    return getattr(settings, "DATABASE_APP_ROLE", "") or ""


def _quote(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def switch_to_app_role(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: ``SET ROLE <app role>`` on every new ``default``
    connection (session-level on purpose: it is the same for every request)."""
    role = app_role()
    if not role or connection.alias != DEFAULT_DB_ALIAS or _owner_mode["on"]:
        return
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {_quote(role)}")


def connect_signals() -> None:
    """Connect ``switch_to_app_role`` to ``connection_created`` (from ``AppConfig.ready``)."""
    connection_created.connect(switch_to_app_role, dispatch_uid="goldleaves_app_role")


@contextlib.contextmanager
def owner_connection(using: str = DEFAULT_DB_ALIAS):
    """Run the block on a connection that stays the login (owner) role: for ``migrate``
    and ``flush`` only. Closes the connection before and after.

    Raises:
        RowLevelSecurityError: called inside a transaction (closing the connection would
            lose it).
    """
    connection = connections[using]
    if connection.in_atomic_block:
        raise RowLevelSecurityError("owner_connection() cannot switch roles inside a transaction.")
    previous = _owner_mode["on"]
    connection.close()
    _owner_mode["on"] = True
    try:
        yield connection
    finally:
        connection.close()
        _owner_mode["on"] = previous


CREATE_ROLE_SQL = (
    "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT"
)


def ensure_app_role(connection, *, rls_enabled: bool) -> list[str]:
    """Create (if missing and allowed) and grant the app role; set the database default
    ``app.rls_enabled`` unless it already matches (``ensure_rls_default``). Runs as the
    owner. Returns what it did (list of human-readable lines).

    Raises:
        RowLevelSecurityError: the role is missing and the login role may not create it, or the
            login role may not write the database default (message says what to GRANT).
    """
    role = app_role()
    if connection.vendor != "postgresql":
        return []
    if not role:
        return ensure_rls_default(connection, rls_enabled=rls_enabled)
    done = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            cursor.execute(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
            )
            if not cursor.fetchone()[0]:
                raise RowLevelSecurityError(
                    f"Database role {role!r} does not exist and "
                    f"{connection.settings_dict['USER']!r} "
                    "may not create it. Create it as shown in DEPLOY.md ('Database roles')."
                )
            cursor.execute(CREATE_ROLE_SQL.format(role=_quote(role)))
            done.append(f"created role {role}")
        q = _quote(role)
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {q}")
        cursor.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {q}"
        )
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q}")
        done.append(f"granted DML to {role}")
    done += ensure_rls_default(connection, rls_enabled=rls_enabled)
    return done


_DATABASE_DEFAULT = """
SELECT split_part(s.setting, '=', 2)
FROM pg_db_role_setting d, unnest(d.setconfig) AS s(setting)
WHERE d.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND d.setrole = 0 AND s.setting LIKE 'app.rls_enabled=%%'
"""


def rls_database_default(connection) -> str | None:
    """The database default of ``app.rls_enabled`` (``pg_db_role_setting``, what every
    new session starts with): ``'on'``, ``'off'`` or None when never set."""
    with connection.cursor() as cursor:
        cursor.execute(_DATABASE_DEFAULT)
        row = cursor.fetchone()
    return row[0] if row else None


def ensure_rls_default(connection, *, rls_enabled: bool) -> list[str]:
    """Write the database default ``app.rls_enabled`` (``'on'``/``'off'``) unless it
    already has that value, in which case nothing is executed (no privilege needed).

    ``ALTER DATABASE ... SET`` of a custom ``app.*`` setting needs the database's owner
    AND, unless superuser, ``SET`` privilege on the parameter (PostgreSQL 15+:
    ``GRANT SET ON PARAMETER app.rls_enabled TO <owner>``; PostgreSQL manual, "GRANT" and
    "ALTER DATABASE"). Returns what it did (a list of one line, or empty).

    Raises:
        RowLevelSecurityError: the login role may not write it; the message gives the SQL to run.
    """
    value = "on" if rls_enabled else "off"
    if rls_database_default(connection) == value:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_user")
        database, user = cursor.fetchone()
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {_quote(database)} SET app.rls_enabled = '{value}'")
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise RowLevelSecurityError(
            f"Role {user!r} may not set the database default app.rls_enabled={value!r} "
            f"({exc.__cause__}). As a superuser, run either\n"
            f"  GRANT SET ON PARAMETER app.rls_enabled TO {_quote(user)};  -- PostgreSQL 15+\n"
            "(then rerun migrate), or set it yourself:\n"
            f"  ALTER DATABASE {_quote(database)} SET app.rls_enabled = '{value}';\n"
            "See DEPLOY.md ('Production SQL')."
        ) from exc
    return [f"database default app.rls_enabled={value}"]
