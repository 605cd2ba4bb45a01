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
from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created

_owner_mode = {"on": False}


def app_role() -> str:
    """The app role's name (``DATABASE_APP_ROLE``), or ``''`` to stay the login role."""
    return getattr(settings, "DATABASE_APP_ROLE", "") or ""


def _quote(name: str) -> str:
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
    connection_created.connect(switch_to_app_role, dispatch_uid="goldleaves_app_role")


@contextlib.contextmanager
def owner_connection(using: str = DEFAULT_DB_ALIAS):
    """Run the block on a connection that stays the login (owner) role: for ``migrate``
    and ``flush`` only. Closes the connection before and after."""
    connection = connections[using]
    if connection.in_atomic_block:
        raise CommandError("owner_connection() cannot switch roles inside a transaction.")
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
    ``app.rls_enabled``. Runs as the owner. Returns what it did.

    Raises:
        CommandError: the role is missing and the login role may not create it.
    """
    role = app_role()
    if not role or connection.vendor != "postgresql":
        return []
    done = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            cursor.execute(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
            )
            if not cursor.fetchone()[0]:
                raise CommandError(
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
        value = "on" if rls_enabled else "off"
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
        cursor.execute(f"ALTER DATABASE {_quote(database)} SET app.rls_enabled = '{value}'")
        done.append(f"granted DML to {role}; database default app.rls_enabled={value}")
    return done
