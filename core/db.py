"""Generic database helpers on Django's default connection (PostgreSQL through psycopg 3)."""

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from psycopg.pq import TransactionStatus


def transaction_aborted() -> bool:
    """Whether the current transaction on Django's default connection is aborted: a
    statement failed and PostgreSQL ignores every command until ROLLBACK (or ROLLBACK TO
    SAVEPOINT), and a COMMIT would silently roll back (libpq ``PQTRANS_INERROR``,
    PostgreSQL manual, 34.2 "Connection Status Functions", ``PQtransactionStatus``).
    False when there is no open connection."""
    pg = connections[DEFAULT_DB_ALIAS].connection
    return pg is not None and pg.info.transaction_status == TransactionStatus.INERROR


def psycopg_cursor(cursor_class):
    """A psycopg cursor of ``cursor_class`` on Django's default connection, in its current
    transaction, wrapped like Django's own cursors (``CursorDebugWrapper`` when queries are
    logged, else ``CursorWrapper``): logged, counted by ``CaptureQueriesContext``, seen by
    execute wrappers. Use it as a context manager (``with psycopg_cursor(...) as cursor``).

    ``cursor_class`` chooses the binding (psycopg docs, "Server-side binding" and
    "Client-side-binding cursors"): ``psycopg.Cursor`` binds parameters on the server, so
    they travel separately from the SQL (arrays in binary format); ``psycopg.ClientCursor``
    quotes them into the SQL text on the client, which a query of several statements needs
    (it runs through the simple query protocol, PostgreSQL manual, 55.2.2 "Simple Query"),
    whatever the connection's ``server_side_binding`` option says. Opens the connection
    if it is not open yet."""
    connection.ensure_connection()
    wrapper = CursorDebugWrapper if connection.queries_logged else CursorWrapper
    return wrapper(cursor_class(connection.connection), connection)
