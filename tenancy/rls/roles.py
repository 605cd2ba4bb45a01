"""Database roles: requests run as the app role, migrations as the owner.

Two ways to log in, chosen by ``DATABASE_OWNER_URL`` (goldleaves/settings.py):

* **Two logins** (``DATABASE_OWNER_URL`` set; production, CI, the embedded database):
  ``DATABASE_URL`` logs in as the **app role** itself and ``DATABASE_OWNER_URL`` as the
  **owner**, which owns the tables. ``owner_connection`` points Django's connection at the
  owner's login for ``migrate`` / ``flush`` / ``citus_distribute`` and the test
  database's creation; everything else runs as the app role, with no way back to a more
  privileged role (``RESET ROLE`` returns to the login, the app role).
* **One login** (``DATABASE_OWNER_URL`` unset; development only): ``DATABASE_URL`` logs in
  as the owner (e.g. the local superuser) and every connection of the ``default`` alias
  switches to the app role with ``SET ROLE`` right after connecting
  (``connection_created``), except while ``owner_connection`` is active. A ``RESET ROLE``
  would get the owner back, so ``check_isolation --strict`` fails in this mode.

The **app role** (``DATABASE_APP_ROLE``, default ``goldleaves_app``; with two logins the
user of ``DATABASE_URL``) is not a superuser, owns nothing and has no BYPASSRLS, so
PostgreSQL applies every row-level-security policy to it (FORCE covers the owner as well).
* The one cross-tenant path is ``tenancy.context.cross_tenant`` (grep for it).

``ensure_app_role`` (called by ``migrate``) creates the app role as a login (with
``DATABASE_URL``'s password, if any) when the owner may (``CREATEROLE``: the embedded
database, CI), grants it DML on every table
and sequence, and writes ``app.rls_enabled = 'on'`` as the database default,
whatever ``RLS_ENABLED`` says: a session that did not set it (no tenant context, or a
Citus worker the transaction's settings did not reach) enforces row-level security.
``RLS_ENABLED=false`` is carried by every tenant context instead, as a transaction-local
``app.rls_enabled = 'off'`` (``tenancy.context``), which Citus forwards to its workers.
"""

import contextlib

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.signals import connection_created
from django.db.utils import load_backend

from tenancy.rls import RowLevelSecurityError

_owner_mode = {"on": False}


def app_role() -> str:
    """The app role's name (``DATABASE_APP_ROLE``), or ``''`` to stay the login role."""
    return getattr(settings, "DATABASE_APP_ROLE", "") or ""


def _quote(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def owner_login() -> dict:
    """The owner's login (``DATABASE_OWNER``, parsed from ``DATABASE_OWNER_URL``: ``USER``,
    ``PASSWORD``, ``HOST``, ``PORT``, ``OPTIONS``), or ``{}`` when the app logs in as the
    owner and ``SET ROLE``s (one login)."""
    return getattr(settings, "DATABASE_OWNER", None) or {}


def logs_in_as_app_role() -> bool:
    """True when ``DATABASE_URL`` logs in as the app role itself (``DATABASE_OWNER_URL`` is
    set), so no ``SET ROLE`` is needed and ``RESET ROLE`` cannot escape."""
    return bool(owner_login())


#: The keys of a ``DATABASES`` entry that say who logs in where.
_LOGIN_KEYS = ("USER", "PASSWORD", "HOST", "PORT")


def owner_settings_dict(settings_dict: dict) -> dict:
    """``settings_dict`` (a ``DATABASES`` entry, its ``NAME`` kept) with the owner's login
    in place of the app's, and without a connection pool (the pool holds app-role
    connections). The same dict, copied, when there is one login."""
    owner = owner_login()
    result = dict(settings_dict)
    if owner:
        result.update({key: owner.get(key, "") for key in _LOGIN_KEYS})
        options = {**(settings_dict.get("OPTIONS") or {}), **(owner.get("OPTIONS") or {})}
    else:
        options = dict(settings_dict.get("OPTIONS") or {})
    options.pop("pool", None)
    result["OPTIONS"] = options
    return result


def owner_connect_kwargs(using: str = DEFAULT_DB_ALIAS) -> dict:
    """Keyword arguments for ``psycopg.connect`` that log in as the owner to the database
    ``using`` currently names (the test database during tests): for DDL and catalog
    reads the app role may not do, on a connection of its own."""
    s = owner_settings_dict(connections[using].settings_dict)
    options = s.get("OPTIONS") or {}
    return {
        "host": s["HOST"] or options.get("host") or None,
        "port": s["PORT"] or options.get("port") or None,
        "dbname": s["NAME"],
        "user": s["USER"] or None,
        "password": s["PASSWORD"] or None,
    }


def switch_to_app_role(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: ``SET ROLE <app role>`` on every new ``default``
    connection (session-level on purpose: it is the same for every request). Nothing
    when the connection already logs in as the app role (two logins)."""
    role = app_role()
    if not role or connection.alias != DEFAULT_DB_ALIAS or _owner_mode["on"]:
        return
    if connection.settings_dict.get("USER") == role:
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
    """Run the block on Django's ``using`` connection logged in as the owner: with two
    logins it connects with ``DATABASE_OWNER_URL``'s login (this thread's connection only;
    no pool), with one login it stays the login role (no ``SET ROLE``). For ``migrate``,
    ``flush``, ``citus_distribute`` and creating the test database. Closes the
    connection before and after. A ``NAME`` changed inside the block through
    ``settings.DATABASES`` (creating the test database does) is kept.

    Raises:
        RowLevelSecurityError: called inside a transaction (closing the connection would
            lose it).
    """
    connection = connections[using]
    if connection.in_atomic_block:
        raise RowLevelSecurityError("owner_connection() cannot switch roles inside a transaction.")
    previous = _owner_mode["on"]
    original = connection.settings_dict
    connection.close()
    _owner_mode["on"] = True
    connection.settings_dict = owner_settings_dict(original)
    try:
        yield connection
    finally:
        connection.close()
        connection.settings_dict = original
        _owner_mode["on"] = previous


@contextlib.contextmanager
def owner_alias(using: str = DEFAULT_DB_ALIAS, alias: str = "owner"):
    """A second Django connection (alias ``alias``, added for the block and removed after)
    logged in as the owner to the database ``using`` currently names: for DDL and catalog
    reads the app role may not do while ``using`` is inside a transaction (a test's), in
    a transaction of its own. ``SET LOCAL ROLE <app role>`` in that transaction runs the
    rest as the app role, seeing the owner's uncommitted DDL. Yields the connection.

    Raises:
        RowLevelSecurityError: ``alias`` is already configured.
    """
    if alias in connections:
        raise RowLevelSecurityError(f"Database alias {alias!r} is already configured.")
    settings_dict = owner_settings_dict(connections[using].settings_dict)
    # Registered in this thread only (not in settings.DATABASES): a connection made for
    # the block, which Django's test cases allow as a dynamically created one.
    owner = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
    connections[alias] = owner
    try:
        yield owner
    finally:
        owner.close()
        del connections[alias]


CREATE_ROLE_SQL = (
    "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT"
)


def ensure_app_role(connection) -> list[str]:
    """Create (if missing and allowed) and grant the app role; set the database default
    ``app.rls_enabled = 'on'`` unless it already is (``ensure_rls_default``). Runs as the
    owner. Returns what it did (list of human-readable lines).

    Raises:
        RowLevelSecurityError: the role is missing and the login role may not create it, or the
            login role may not write the database default (message says what to GRANT).
    """
    role = app_role()
    if connection.vendor != "postgresql":
        return []
    if not role:
        return ensure_rls_default(connection)
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
            password = settings.DATABASES[connection.alias].get("PASSWORD") or ""
            if password and logs_in_as_app_role():
                # Client-side binding (Django's default cursor) quotes the literal.
                create = CREATE_ROLE_SQL.format(role=_quote(role)) + " PASSWORD %s"
                cursor.execute(create, [password])
            else:
                cursor.execute(CREATE_ROLE_SQL.format(role=_quote(role)))
            done.append(f"created login role {role}")
        q = _quote(role)
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {q}")
        cursor.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {q}"
        )
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q}")
        done.append(f"granted DML to {role}")
    done += ensure_rls_default(connection)
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


#: The database default of ``app.rls_enabled``, the same for either ``RLS_ENABLED``: a
#: session that did not set the setting itself enforces row-level security.
RLS_DATABASE_DEFAULT = "on"


def ensure_rls_default(connection) -> list[str]:
    """Write the database default ``app.rls_enabled = 'on'`` (``RLS_DATABASE_DEFAULT``)
    unless it already has that value, in which case nothing is executed (no privilege
    needed).

    ``ALTER DATABASE ... SET`` of a custom ``app.*`` setting needs the database's owner
    AND, unless superuser, ``SET`` privilege on the parameter (PostgreSQL 15+:
    ``GRANT SET ON PARAMETER app.rls_enabled TO <owner>``; PostgreSQL manual, "GRANT" and
    "ALTER DATABASE"). Returns what it did (a list of one line, or empty).

    Raises:
        RowLevelSecurityError: the login role may not write it; the message gives the SQL to run.
    """
    value = RLS_DATABASE_DEFAULT
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
