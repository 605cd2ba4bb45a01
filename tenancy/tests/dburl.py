"""A ``DATABASE_URL`` for subprocesses (gunicorn, manage.py) of the live tests, pointing at
the test database of this run: TCP (DATABASE_URL set) or the embedded server's socket."""

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
    """A new autocommit psycopg connection to the test database as the suite's login role
    (the tables' owner), for DDL the app role may not run (triggers, scratch tables).
    The caller closes it (it is a context manager). Not to be confused with
    ``tenancy.rls.roles.owner_connection``, which switches Django's own connection."""
    import psycopg

    s = connection.settings_dict
    host, port = socket_or_host()
    return psycopg.connect(
        host=host,
        port=port,
        dbname=s["NAME"],
        user=s["USER"],
        password=s["PASSWORD"] or None,
        autocommit=True,
    )
