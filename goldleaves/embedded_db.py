"""Embedded PostgreSQL for machines without ``DATABASE_URL``.

Starts (or attaches to) a PostgreSQL server shipped by the pip package
``pgserver`` with its data directory under ``.data/pg``. The server listens on a
Unix socket only and keeps running between commands (``cleanup_mode=None``), so
``manage.py`` calls and test runs share it. It is for development and tests on a
fresh machine; production sets ``DATABASE_URL``.
"""

import logging
import warnings
from pathlib import Path

DATABASE_NAME = "goldleaves"


def embedded_database_url(data_root: Path, database: str = DATABASE_NAME) -> str:
    """Return a ``postgresql://`` URL for the embedded server, starting it if needed.

    Args:
        data_root: folder that holds the server's data directory (``<data_root>/pg``).
        database: database to connect to; created on first use.

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
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return server.get_uri(database)
