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
from dataclasses import dataclass, field

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


# -- the distribution plan ------------------------------------------------------------

_FOREIGN_KEYS = """
SELECT DISTINCT c.conrelid::regclass::text, c.confrelid::regclass::text
FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
WHERE c.contype = 'f' AND r.relnamespace = current_schema()::regnamespace
  AND c.conrelid <> c.confrelid
"""

_DISTRIBUTED = """
SELECT logicalrelid::regclass::text, partmethod, repmodel, colocationid,
       CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END
FROM pg_dist_partition
"""

DISTRIBUTION_COLUMN = "organization_id"


@dataclass
class Step:
    """One table of the plan: ``kind`` ``"reference"`` or ``"distributed"``, the SQL that
    makes it so, and ``done`` (a reason) when the table already is."""

    kind: str
    table: str
    sql: str
    done: str = ""


@dataclass
class Plan:
    """The steps in the order they run (reference tables, then distributed tables, each
    parents first), and the problems that forbid running them (lines)."""

    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[Step]:
        return [s for s in self.steps if not s.done]


def _parents_first(tables: set[str], edges: set[tuple[str, str]], key) -> list[str]:
    """``tables`` ordered so that a referenced table comes before the tables referencing
    it (``edges``: ``(referencing, referenced)``); ties by ``key``. Cycles are broken by
    ``key`` too (never the case here: Django's foreign keys between these tables are
    acyclic)."""
    parents = {t: {b for a, b in edges if a == t and b in tables} for t in tables}
    ordered: list[str] = []
    remaining = set(tables)
    while remaining:
        ready = [t for t in remaining if not (parents[t] & remaining)] or [min(remaining, key=key)]
        first = min(ready, key=key)
        ordered.append(first)
        remaining.discard(first)
    return ordered


def _literal_regclass(table: str) -> str:
    return "'" + ('"' + table.replace('"', '""') + '"').replace("'", "''") + "'"


def distribution_plan(connection, *, shard_count: int | None = None) -> Plan:
    """What ``manage.py citus_distribute`` runs, read from the catalog.

    * Distributed by ``organization_id``: every tenant table (``tenancy.rls.policies``), parents
      first, all colocated with the first (``colocate_with``), which starts the group
      (``colocate_with => 'none'`` with ``shard_count`` when given, else Citus's default
      group and ``citus.shard_count``). Colocated tables keep an organization's rows of
      every table on one node, so joins and foreign keys between them stay local (Citus
      docs, "Table Co-Location").
    * Reference tables (a copy on every node): every table that a tenant table references
      but that is not one (organizations, users), and every table linked to those by
      foreign keys, either way (the auth tables, the admin log...), parents first: a
      distributed table may reference only colocated or reference tables, and a reference
      table only reference tables (Citus docs, ``create_reference_table``).
    * Skipped: a table already so in ``pg_dist_partition`` (on Citus). A table there in
      another way (distributed by another column, not colocated, a reference table that
      should be distributed) is a problem: the plan refuses rather than guess.
    * ``problems`` also lists what ``tenancy.rls.isolation.distribution_problems`` finds
      (keys without ``organization_id``).
    """
    from django.apps import apps

    from tenancy.rls import policies
    from tenancy.rls.isolation import distribution_problems

    entries = policies.tenant_tables(apps.get_models())
    tenant = {e.table for e in entries if not e.through_parent}
    order = {cfg.label: i for i, cfg in enumerate(apps.get_app_configs())}
    app_of = {e.table: e.app_label for e in entries}

    def key(table):
        return (order.get(app_of.get(table, ""), len(order)), table)

    plan = Plan()
    with connection.cursor() as cursor:
        plan.problems += distribution_problems(cursor, entries)
        cursor.execute(_FOREIGN_KEYS)
        edges = {(a, b) for a, b in cursor.fetchall()}
        existing = {}
        if uses_citus(connection):
            cursor.execute(_DISTRIBUTED)
            existing = {row[0]: row[1:] for row in cursor.fetchall()}

    reference = {b for a, b in edges if a in tenant and b not in tenant}
    frontier = list(reference)
    while frontier:
        table = frontier.pop()
        for a, b in edges:
            for this, other in ((a, b), (b, a)):
                if this == table and other not in tenant and other not in reference:
                    reference.add(other)
                    frontier.append(other)

    for table in _parents_first(reference, edges, key):
        step = Step(
            "reference", table, f"SELECT create_reference_table({_literal_regclass(table)})"
        )
        state = existing.get(table)
        if state is not None:
            method, repmodel = state[0], state[1]
            if method == "n" and repmodel == "t":
                step.done = "already a reference table"
            elif method == "h":
                plan.problems.append(f"table {table}: distributed, but must be a reference table")
        plan.steps.append(step)

    distributed = _parents_first(tenant, edges, key)
    anchor = distributed[0] if distributed else None
    anchor_state = existing.get(anchor) if anchor else None
    for table in distributed:
        if table == anchor:
            how = (
                f"colocate_with => 'none', shard_count => {int(shard_count)}"
                if shard_count
                else "colocate_with => 'default'"
            )
        else:
            how = f"colocate_with => {_literal_regclass(anchor)}"
        step = Step(
            "distributed",
            table,
            f"SELECT create_distributed_table({_literal_regclass(table)}, "
            f"'{DISTRIBUTION_COLUMN}', {how})",
        )
        state = existing.get(table)
        if state is not None and state[0] == "h":
            if state[3] != DISTRIBUTION_COLUMN:
                plan.problems.append(
                    f"table {table}: distributed by {state[3]}, not {DISTRIBUTION_COLUMN}"
                )
            elif anchor_state is not None and state[2] != anchor_state[2]:
                plan.problems.append(f"table {table}: distributed, but not colocated with {anchor}")
            else:
                step.done = f"already distributed by {DISTRIBUTION_COLUMN}"
        elif state is not None and state[0] == "n" and state[1] == "t":
            plan.problems.append(f"table {table}: a reference table, but a tenant table")
        plan.steps.append(step)
    if shard_count and anchor_state is not None:
        plan.notes.append(
            f"{anchor} is distributed already: its colocation group keeps its shard count "
            "(--shard-count applies to a first distribution; alter_distributed_table "
            "changes it later)"
        )
    return plan
