"""``core.db``: the aborted-transaction probe and psycopg cursors on Django's connection."""

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from core.db import psycopg_cursor, transaction_aborted


@pytest.mark.django_db
def test_transaction_aborted_after_a_failed_statement_until_rollback_to_savepoint():
    assert transaction_aborted() is False
    savepoint = transaction.savepoint()
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    assert transaction_aborted() is True
    transaction.savepoint_rollback(savepoint)
    assert transaction_aborted() is False


@pytest.mark.django_db
def test_psycopg_cursors_run_in_the_current_transaction_and_are_counted():
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.probe', 'in this transaction', true)")
    with CaptureQueriesContext(connection) as queries:
        with psycopg_cursor(psycopg.Cursor) as cursor:
            cursor.execute("SELECT current_setting('app.probe'), %s::int", [7])
            assert cursor.fetchone() == ("in this transaction", 7)
        # Client-side binding: several statements with parameters in one query.
        with psycopg_cursor(psycopg.ClientCursor) as cursor:
            cursor.execute("SELECT %s::int; SELECT current_setting('app.probe')", [1])
            assert cursor.fetchone() == (1,)
            assert cursor.nextset() and cursor.fetchone() == ("in this transaction",)
    # Logged like Django's own queries; the server-bound parameter stays a placeholder.
    assert [query["sql"] for query in queries.captured_queries] == [
        "SELECT current_setting('app.probe'), $1::int",
        "SELECT 1::int; SELECT current_setting('app.probe')",
    ]
