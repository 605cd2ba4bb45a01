"""Citus: whether the database is a Citus coordinator, and the plan that distributes it.

The same code runs on plain PostgreSQL and on Citus; what differs is detected from the
database (the ``citus`` extension in ``pg_extension``), once per physical connection:

* ``tenancy.context`` sends ``SET LOCAL citus.propagate_set_commands = 'local'`` before
  the tenant settings, so that Citus forwards them to every worker that takes part in
  the transaction (Citus docs, ``citus.propagate_set_commands``: "local" propagates
  ``SET LOCAL``; without it a worker sees only its own defaults);
* ``manage.py citus_distribute`` (``distribution_plan``) makes the reference and
  distributed tables.
"""

from __future__ import annotations

import weakref

from django.db import DEFAULT_DB_ALIAS, connections

_CITUS_INSTALLED = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

#: psycopg connection -> bool. Keyed by the physical connection, so a pooled or
#: persistent connection is asked once, a new one (reconnect, PgBouncer aside) again.
_detected: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def uses_citus(connection=None) -> bool:
    """Whether Django connection ``connection`` (default: the ``default`` alias) is to a
    database with the ``citus`` extension. Asks the database the first time for each
    physical connection (one query), then answers from memory. False for another vendor."""
    connection = connection or connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "postgresql":
        return False
    connection.ensure_connection()
    raw = connection.connection
    known = _detected.get(raw)
    if known is None:
        with connection.cursor() as cursor:
            cursor.execute(_CITUS_INSTALLED)
            known = bool(cursor.fetchone()[0])
        _detected[raw] = known
    return known


def detect_on_connect(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: detect Citus as the connection opens, so the one
    query is not paid inside a request (nor counted in its query budget)."""
    if connection.vendor == "postgresql":
        uses_citus(connection)
