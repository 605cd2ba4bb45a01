"""Embedded PostgreSQL for machines without ``DATABASE_URL``.

Starts (or attaches to) a PostgreSQL server shipped by the pip package
``pgserver`` with its data directory under ``.data/pg``. The server listens on a
Unix socket only (trust authentication) and keeps running between commands
(``cleanup_mode=None``), so ``manage.py`` calls and test runs share it. It is for
development and tests on a fresh machine; production sets ``DATABASE_URL``. ``make stop`` stops it
(``scripts/embedded_db.py``, ``stop_embedded_server``), and ``make clean-data`` refuses
to delete its data while it runs.

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
import os
import signal
import time
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


def embedded_server_pid(data_root: Path) -> int | None:
    """The process id of the embedded server whose data directory is ``<data_root>/pg``,
    or None when it is not running (no ``postmaster.pid``, or its process is gone).

    Reads the first line of ``postmaster.pid``, which PostgreSQL writes at start and
    removes at shutdown (PostgreSQL manual, 19.3 "Starting the Database Server"; a crash
    can leave it behind, hence the process check). Starts nothing, imports no pgserver.
    """
    pid_file = Path(data_root) / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0].strip())
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # running as another user (pgserver's own when run as root)
        return pid
    return pid


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped by its
    parent, does not count; Linux ``/proc/<pid>/stat``, elsewhere a signal 0)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_embedded_server(data_root: Path, *, timeout: float = 30.0) -> int | None:
    """Stop the embedded server of ``data_root`` with a fast shutdown (``SIGINT``: open
    transactions are rolled back, clients disconnected, the data is flushed; PostgreSQL
    manual, 19.5 "Shutting Down the Server") and wait until it is gone.

    Returns:
        the pid that was stopped, or None when no server was running.
    Raises:
        TimeoutError: still running after ``timeout`` seconds.
        PermissionError: the server runs as a user this process may not signal.
    """
    pid = embedded_server_pid(data_root)
    if pid is None:
        return None
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while embedded_server_pid(data_root) == pid or _alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the embedded PostgreSQL (pid {pid}) is still running")
        time.sleep(0.1)
    return pid
