"""A ``DATABASE_URL`` for subprocesses (gunicorn, manage.py) of the live tests, pointing at
the test database of this run: TCP (DATABASE_URL set) or the embedded server's socket."""

import contextlib
import uuid
from urllib.parse import quote

from django.db import connection


def socket_or_host() -> tuple[str, int]:
    """(host or socket directory, port) of the test database server."""
    s = connection.settings_dict
    host = s["HOST"] or (s.get("OPTIONS") or {}).get("host") or "127.0.0.1"
    return host, int(s["PORT"] or 5432)


def subprocess_database_url(*, host=None, port=None, user=None, name=None, password=None) -> str:
    """A URL for the test database (or database ``name`` on the same server), logging in
    as ``user`` (default: the suite's login role, with its password unless ``password``)."""
    s = connection.settings_dict
    default_host, default_port = socket_or_host()
    host, port = host or default_host, port or default_port
    user = user or s["USER"]
    auth = quote(user, safe="")
    if password is None and user == s["USER"]:
        password = s["PASSWORD"]
    if password:
        auth += ":" + quote(password, safe="")
    name = quote(name or s["NAME"], safe="")
    if host.startswith("/"):
        return f"postgres://{auth}@/{name}?host={quote(host, safe='/')}&port={port}"
    return f"postgres://{auth}@{host}:{port}/{name}"


def owner_psycopg_connection():
    """A new autocommit psycopg connection to the test database as the tables' owner
    (``DATABASE_OWNER_URL``'s login, or the suite's login role when there is one login),
    for DDL the app role may not run (triggers, scratch tables). The caller closes it (it
    is a context manager). Not to be confused with ``tenancy.rls.roles.owner_connection``,
    which switches Django's own connection."""
    import psycopg

    from tenancy.rls.roles import owner_connect_kwargs

    return psycopg.connect(**owner_connect_kwargs(), autocommit=True)


def owner_database_url(**kwargs) -> str:
    """``subprocess_database_url`` logging in as the owner (``DATABASE_OWNER_URL``'s user
    and password, or the suite's login role when there is one login)."""
    from tenancy.rls.roles import owner_login

    owner = owner_login()
    if owner:
        kwargs.setdefault("user", owner["USER"])
        kwargs.setdefault("password", owner.get("PASSWORD") or "")
    return subprocess_database_url(**kwargs)


def subprocess_database_env(**kwargs) -> dict:
    """``DATABASE_URL`` (and ``DATABASE_OWNER_URL`` with two logins) for a subprocess that
    should log in like this suite: as the app role, with the owner for migrate."""
    from tenancy.rls.roles import owner_login

    env = {"DATABASE_URL": subprocess_database_url(**kwargs)}
    if owner_login():
        env["DATABASE_OWNER_URL"] = owner_database_url(**kwargs)
    return env


@contextlib.contextmanager
def owner_analyze():
    """Yield ``analyze(cursor, table)``, which runs ``ANALYZE table`` as the owner inside
    the transaction of ``cursor`` (the test's, logged in as the app role), so the
    statistics count the test's uncommitted rows. Only the table's owner may ANALYZE it
    (PostgreSQL manual, "ANALYZE"); the owner creates a ``SECURITY DEFINER`` function for
    the block, granted to the app role, and drops it after."""
    from tenancy.rls.roles import app_role

    name = f"gl_test_analyze_{uuid.uuid4().hex[:8]}"
    with owner_psycopg_connection() as owner:
        owner.execute(
            f"CREATE FUNCTION public.{name}(t regclass) RETURNS void LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, public "
            "AS $$ BEGIN EXECUTE format('ANALYZE %s', t); END $$"
        )
        owner.execute(f"REVOKE ALL ON FUNCTION public.{name}(regclass) FROM PUBLIC")
        if app_role():
            owner.execute(f'GRANT EXECUTE ON FUNCTION public.{name}(regclass) TO "{app_role()}"')
    try:
        yield lambda cursor, table: cursor.execute(f"SELECT public.{name}(%s)", [table])
    finally:
        with owner_psycopg_connection() as owner:
            owner.execute(f"DROP FUNCTION public.{name}(regclass)")
