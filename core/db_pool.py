"""The psycopg pool's ``reset`` callback (settings import it; no Django imports here)."""


def reset_pooled_connection(conn) -> None:
    """Called by psycopg_pool when a connection comes back to the pool (psycopg_pool docs,
    "ConnectionPool ... reset"). A safety net: ``app.current_org`` is transaction-local and
    already gone; ``RESET ALL`` also drops any session-level ``SET`` a bug might have made,
    back to the database defaults. Leaves the connection idle, as the pool requires."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("RESET ALL")
    finally:
        conn.autocommit = autocommit
