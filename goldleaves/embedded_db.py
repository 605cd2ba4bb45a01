"""Embedded PostgreSQL for machines without ``DATABASE_URL``.

Starts (or attaches to) a PostgreSQL server shipped by the pip package
``pgserver`` with its data directory under ``.data/pg``. The server listens on a
Unix socket only (trust authentication) and keeps running between commands
(``cleanup_mode=None``), so ``manage.py`` calls and test runs share it. It is for
development and tests on a fresh machine; production sets ``DATABASE_URL``.

It has both logins of ``tenancy.rls.roles``: the superuser (the owner, which runs
``migrate``) and the app role (``DATABASE_APP_ROLE``), created here as a login so that
the app can connect as itself before the first ``migrate`` grants it anything.

``max_connections`` is set to ``EMBEDDED_MAX_CONNECTIONS`` (64) on purpose: ``make run``
holds at most WEB_WORKERS x WEB_THREADS persistent connections (2 x 16 = 32 by default,
one per gunicorn thread), the job worker a few (its psycopg pool and Django's own), and
the rest is room for ``manage.py`` commands, a shell and a test run beside it. A fixed
figure makes "too many clients" a configuration error one can reason about (raise it with
the web threads) instead of a property of whatever initdb picked.
"""

import logging
import warnings
from pathlib import Path

DATABASE_NAME = "goldleaves"

#: max_connections of the embedded server (see the module docstring for the budget).
EMBEDDED_MAX_CONNECTIONS = 64


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ensure_max_connections(server) -> None:
    """``ALTER SYSTEM SET max_connections`` and restart the server when it differs
    (first start only: the value lives in the data directory's ``postgresql.auto.conf``).
    ``max_connections`` needs a restart (PostgreSQL manual, 20.3.1 "Connection Settings")."""
    from pgserver._commands import pg_ctl

    shown = server.psql("SHOW max_connections;")
    if f" {EMBEDDED_MAX_CONNECTIONS}\n" in shown:
        return
    server.psql(f"ALTER SYSTEM SET max_connections = {EMBEDDED_MAX_CONNECTIONS};")
    # pg_ctl restart reuses the start options (socket directory) from postmaster.opts.
    pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.log), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=30,
    )


def embedded_database_url(
    data_root: Path, database: str = DATABASE_NAME, *, app_login: str = ""
) -> str:
    """Return a ``postgresql://`` URL for the embedded server (as its superuser, the
    owner), starting it if needed.

    Args:
        data_root: folder that holds the server's data directory (``<data_root>/pg``).
        database: database to connect to; created on first use.
        app_login: the app role (``DATABASE_APP_ROLE``); created as a ``LOGIN`` role with
            ``tenancy.rls.roles.CREATE_ROLE_SQL`` when missing. Empty: none.

    Returns:
        str: a libpq URL whose ``host`` is the server's Unix-socket directory.

    Raises:
        ImportError: ``pgserver`` is not installed (``pip install -r requirements.txt``).
        RuntimeError: the server could not be started (pgserver reports why).
    """
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    # pgserver logs every attach/detach at INFO, and platformdirs warns when
    # XDG_RUNTIME_DIR is unset: neither is news to someone running manage.py.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: only machines without DATABASE_URL need it

        server = pgserver.get_server(data_root / "pg", cleanup_mode=None)
    _ensure_max_connections(server)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    if app_login:
        from tenancy.rls.roles import CREATE_ROLE_SQL, _quote

        found = server.psql(f"SELECT 1 FROM pg_roles WHERE rolname = {_sql_literal(app_login)};")
        if "(1 row)" not in found:
            server.psql(CREATE_ROLE_SQL.format(role=_quote(app_login)) + ";")
    return server.get_uri(database)
