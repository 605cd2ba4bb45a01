"""Distributable keys: a tenant table's primary key in the database is ``(organization_id, id)``.

Citus distributes tenant tables by ``organization_id`` and refuses a table whose primary
key or unique constraints do not include it ("Distributed relations cannot have UNIQUE,
EXCLUDE, or PRIMARY KEY constraints that do not include the partition column"), and a
foreign key between two distributed tables that does not include it (Citus docs,
``create_distributed_table``). Django keeps ``id`` as the model's primary key (unique by
itself), so URLs, serializers, the admin and ``ForeignKey`` to the model work unchanged;
only the database key is composite, and foreign keys between tenant tables are the
composite ``(organization_id, x_id) -> (organization_id, id)`` ones
(``tenancy.fields.TenantForeignKey`` in Django, no single-column constraint).

``TenantPrimaryKeys(models=[...])`` is the migration operation that does it, in place and
with data, for the named tenant models of the migration's app, parents first:

1. ``CREATE UNIQUE INDEX CONCURRENTLY <table>_pkey_org ON <table> (organization_id, id)``
   (no lock that blocks writes; PostgreSQL manual, CREATE INDEX, "Building Indexes
   Concurrently"; plain ``CREATE UNIQUE INDEX`` inside an atomic migration, for a table
   that is new in it);
2. one short transaction, ``lock_timeout`` 5 s, that takes ACCESS EXCLUSIVE on the table
   and then on the tables referencing it (``LOCK TABLE`` in that order: the order in
   which requests touch them, parent row first), drops the referencing single-column
   and composite foreign keys, swaps the primary key
   (``ADD CONSTRAINT <table>_pkey PRIMARY KEY USING INDEX``: no scan, the columns are
   already NOT NULL; ALTER TABLE, "ADD table_constraint_using_index"), drops the
   now redundant ``UNIQUE (organization_id, id)`` and re-adds the composite foreign keys
   ``NOT VALID``;
3. ``VALIDATE CONSTRAINT`` of each, outside that transaction (SHARE UPDATE EXCLUSIVE:
   reads and writes go on; ALTER TABLE, "VALIDATE CONSTRAINT").

A table whose primary key is already ``(organization_id, id)`` is skipped, so a migration
interrupted half-way is simply run again. Backwards does the mirror image: ``PRIMARY KEY
(id)``, ``UNIQUE (organization_id, id)`` for the tables that are referenced, the
composite foreign keys on it, and the single-column foreign keys Django had (when the
migration state before the operation has them with ``db_constraint``).

A tenant table created later gets the operation in its first migration, after the
``CreateModel`` (the migration can stay atomic: the table is new and empty).
``tenancy.rls.isolation`` fails on a tenant table whose primary key lacks ``organization_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import migrations, transaction

from tenancy.rls import policies

#: How long the key swap waits for its ACCESS EXCLUSIVE locks before it gives up (and
#: the migration fails, to be run again): while it waits, every request on the table
#: queues behind it (PostgreSQL manual, 20.11 "lock_timeout").
LOCK_TIMEOUT = policies.LOCK_TIMEOUT

PK_ORG_ID = ("organization_id", "id")

_q = policies._q
_literal = policies._literal
_short = policies._short

#: The columns of a table's primary key, in key order (``[]`` without one).
PK_COLUMNS_SQL = """
SELECT a.attname FROM pg_constraint c
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.conrelid = to_regclass(%s) AND c.contype = 'p'
ORDER BY k.n
"""


def primary_key_columns(connection, table: str) -> tuple[str, ...]:
    """The primary-key columns of ``table`` in key order (empty tuple: none, or no table)."""
    with connection.cursor() as cursor:
        cursor.execute(PK_COLUMNS_SQL, [_q(table)])
        return tuple(row[0] for row in cursor.fetchall())


@dataclass
class Child:
    """A tenant table referencing the converted one: its table and referencing column, and
    (backwards only) the Django foreign key to re-create, ``(model, field)``."""

    table: str
    column: str
    django_fk: tuple | None = None


@dataclass
class Group:
    """Statements run together: in one transaction (``atomic``), or one by one in
    autocommit (``CREATE INDEX CONCURRENTLY`` cannot run in a transaction)."""

    statements: list[str]
    atomic: bool = False
    children: list[Child] = field(default_factory=list)


def _drop_pk_sql(table: str) -> str:
    """Drop ``table``'s primary-key constraint whatever its name (a ``DO`` block)."""
    return (
        "DO $$ DECLARE pk text; BEGIN SELECT conname INTO pk FROM pg_constraint "
        f"WHERE conrelid = to_regclass({_literal(_q(table))}) AND contype = 'p'; "
        f"IF pk IS NOT NULL THEN EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', "
        f"{_literal(table)}, pk); END IF; END $$"
    )


def _drop_single_column_fks_sql(child: Child, target: str) -> str:
    """Drop every one-column foreign key ``child.table(child.column) -> target`` (Django's,
    whatever its generated name) (a ``DO`` block)."""
    rel = _literal(_q(child.table))
    return (
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT conname FROM pg_constraint "
        f"WHERE conrelid = to_regclass({rel}) AND contype = 'f' "
        f"AND confrelid = to_regclass({_literal(_q(target))}) AND conkey = ARRAY["
        f"(SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass({rel}) "
        f"AND attname = {_literal(child.column)})]::int2[] LOOP "
        f"EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', {_literal(child.table)}, "
        "r.conname); END LOOP; END $$"
    )


def _composite_fk_sql(child: Child, target: str) -> str:
    """The composite same-organization foreign key of ``child`` (``tenancy.rls.policies``'s name and
    shape), ``NOT VALID``: validated afterwards without blocking writes."""
    name = policies.same_org_fk_name(child.table, child.column)
    return (
        f"ALTER TABLE {_q(child.table)} ADD CONSTRAINT {_q(name)} "
        f"FOREIGN KEY (organization_id, {_q(child.column)}) "
        f"REFERENCES {_q(target)} (organization_id, id) DEFERRABLE INITIALLY DEFERRED NOT VALID"
    )


def _index_sql(name: str, table: str, columns: tuple[str, ...], concurrently: bool) -> list[str]:
    """(Re)build unique index ``name``: a leftover INVALID one (an interrupted concurrent
    build) is dropped first (PostgreSQL manual, CREATE INDEX: "the index ... will be left
    in an invalid state")."""
    drop_invalid = (
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = "
        f"to_regclass({_literal(_q(name))}) AND NOT indisvalid) THEN "
        f"DROP INDEX {_q(name)}; END IF; END $$"
    )
    how = "CONCURRENTLY " if concurrently else ""
    cols = ", ".join(_q(c) for c in columns)
    return [
        drop_invalid,
        f"CREATE UNIQUE INDEX {how}IF NOT EXISTS {_q(name)} ON {_q(table)} ({cols})",
    ]


def _locks(table: str, children: list[Child], atomic_migration: bool) -> list[str]:
    tables = ", ".join(_q(t) for t in dict.fromkeys([table, *(c.table for c in children)]))
    sql = [] if atomic_migration else [f"SET LOCAL lock_timeout = {_literal(LOCK_TIMEOUT)}"]
    return [*sql, f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"]


def forwards_groups(table: str, children: list[Child], *, concurrently: bool) -> list[Group]:
    """What converts ``table`` to ``PRIMARY KEY (organization_id, id)``, re-pointing the
    composite foreign keys of ``children`` at it (see the module docstring)."""
    index = _short(f"{table}_pkey_org")
    swap = _locks(table, children, not concurrently)
    for child in children:
        swap.append(_drop_single_column_fks_sql(child, table))
        name = policies.same_org_fk_name(child.table, child.column)
        swap.append(f"ALTER TABLE {_q(child.table)} DROP CONSTRAINT IF EXISTS {_q(name)}")
    swap += [
        _drop_pk_sql(table),
        f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(_short(table + '_pkey'))} "
        f"PRIMARY KEY USING INDEX {_q(index)}",
        f"ALTER TABLE {_q(table)} DROP CONSTRAINT IF EXISTS {_q(policies.org_unique_name(table))}",
    ]
    swap += [_composite_fk_sql(child, table) for child in children]
    validate = [
        f"ALTER TABLE {_q(c.table)} VALIDATE CONSTRAINT "
        f"{_q(policies.same_org_fk_name(c.table, c.column))}"
        for c in children
    ]
    return [
        Group(_index_sql(index, table, PK_ORG_ID, concurrently)),
        Group(swap, atomic=True, children=children),
        Group(validate),
    ]


def backwards_groups(
    table: str, children: list[Child], *, concurrently: bool, schema_editor
) -> list[Group]:
    """What puts ``table`` back to ``PRIMARY KEY (id)``: ``UNIQUE (organization_id, id)``
    for the composite foreign keys of ``children`` (re-added), and each child's Django
    single-column foreign key where ``Child.django_fk`` names one."""
    index = _short(f"{table}_pkey_id")
    unique = policies.org_unique_name(table)
    build = _index_sql(index, table, ("id",), concurrently)
    if children:
        build += _index_sql(unique, table, PK_ORG_ID, concurrently)
    swap = _locks(table, children, not concurrently)
    for child in children:
        name = policies.same_org_fk_name(child.table, child.column)
        swap.append(f"ALTER TABLE {_q(child.table)} DROP CONSTRAINT IF EXISTS {_q(name)}")
    swap += [
        _drop_pk_sql(table),
        f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(_short(table + '_pkey'))} "
        f"PRIMARY KEY USING INDEX {_q(index)}",
    ]
    validate = []
    if children:
        swap.append(
            f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(unique)} UNIQUE USING INDEX {_q(unique)}"
        )
    for child in children:
        swap.append(_composite_fk_sql(child, table))
        validate.append(
            f"ALTER TABLE {_q(child.table)} VALIDATE CONSTRAINT "
            f"{_q(policies.same_org_fk_name(child.table, child.column))}"
        )
        if child.django_fk is not None:
            model, fk = child.django_fk
            statement = schema_editor._create_fk_sql(model, fk, "_fk_%(to_table)s_%(to_column)s")
            swap.append(f"{statement} NOT VALID")
            validate.append(
                f"ALTER TABLE {_q(child.table)} VALIDATE CONSTRAINT {statement.parts['name']}"
            )
    return [Group(build), Group(swap, atomic=True, children=children), Group(validate)]


class TenantPrimaryKeys(migrations.operations.base.Operation):
    """Make the database primary key of each of ``models`` (model names of the migration's
    app, tenant models, listed parents first) ``(organization_id, id)``, with only the
    composite foreign keys between tenant tables (module docstring). No state change;
    PostgreSQL only. Reversible.

    In a non-atomic migration (``atomic = False``: tables that already hold rows) the
    indexes are built ``CONCURRENTLY`` and the swap has its own short transaction; in an
    atomic one everything runs in the migration's transaction.
    """

    reversible = True
    reduces_to_sql = True  # sqlmigrate prints every statement (the catalog is not read then)

    def __init__(self, models: list[str]):
        self.models = list(models)

    def deconstruct(self):
        return self.__class__.__name__, [], {"models": self.models}

    def state_forwards(self, app_label, state):
        pass

    def _tables(self, app_label, state) -> list[str]:
        return [state.apps.get_model(app_label, name)._meta.db_table for name in self.models]

    @staticmethod
    def _children(state, table: str, *, with_django_fks: bool) -> list[Child]:
        """The tenant tables with a foreign key to ``table`` (any app), as ``state`` has
        them: ``policies.tenant_tables`` references, so the same list RLS twins with composite
        keys."""
        models_by_table = {m._meta.db_table: m for m in state.apps.get_models()}
        children = []
        for entry in policies.tenant_tables(state.apps.get_models()):
            for column, target in entry.references:
                if target != table:
                    continue
                child = Child(entry.table, column)
                model = models_by_table[entry.table]
                fk = next(f for f in model._meta.local_fields if f.column == column)
                if with_django_fks and fk.db_constraint:
                    child.django_fk = (model, fk)
                children.append(child)
        return children

    def _run(self, schema_editor, groups: list[Group]) -> None:
        connection = schema_editor.connection
        collecting = schema_editor.collect_sql
        for group in groups:
            own_transaction = group.atomic and not schema_editor.atomic_migration
            if own_transaction and not collecting:
                with transaction.atomic(using=connection.alias):
                    for statement in group.statements:
                        schema_editor.execute(statement, params=None)
                continue
            # sqlmigrate prints the transaction the swap runs in
            statements = (
                ["BEGIN", *group.statements, "COMMIT"] if own_transaction else group.statements
            )
            for statement in statements:
                schema_editor.execute(statement, params=None)

    def _convert(self, app_label, schema_editor, state, *, target, backwards):
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        concurrently = not schema_editor.atomic_migration
        tables = self._tables(app_label, state)
        for table in reversed(tables) if backwards else tables:
            if not schema_editor.collect_sql and primary_key_columns(connection, table) in (
                target,
                (),
            ):
                continue  # already converted (or no such table): idempotent
            children = self._children(state, table, with_django_fks=backwards)
            if backwards:
                groups = backwards_groups(
                    table, children, concurrently=concurrently, schema_editor=schema_editor
                )
            else:
                groups = forwards_groups(table, children, concurrently=concurrently)
            self._run(schema_editor, groups)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._convert(app_label, schema_editor, to_state, target=PK_ORG_ID, backwards=False)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._convert(app_label, schema_editor, to_state, target=("id",), backwards=True)

    def describe(self):
        return f"Primary key (organization_id, id) on {', '.join(self.models)}"

    @property
    def migration_name_fragment(self):
        return "tenant_primary_keys"


def identity_to_sequence_sql(table: str, column: str = "id") -> str:
    """Turn ``table.column`` from ``GENERATED BY DEFAULT AS IDENTITY`` into a plain
    ``bigint`` with ``DEFAULT nextval('<table>_<column>_seq')`` (a sequence OWNED BY the
    column, as ``bigserial`` makes), continuing where the identity's sequence stood.

    Citus refuses ``alter_distributed_table`` / ``undistribute_table`` on a table with an
    identity column ("cannot complete operation on a table with identity column"), and
    ``create_distributed_table`` takes that path for a table it had already turned into
    a Citus local table (one that references a reference table, which Citus does when the
    coordinator is in its metadata); ``bigserial``-style sequence defaults have none of
    these limits (Citus keeps the sequence on the coordinator). Static and
    idempotent (a ``DO`` block; nothing happens without an identity). The sequence's
    position is read from the sequence itself, never from the table (row-level security
    hides rows from the migrating owner)."""
    seq = _short(f"{table}_{column}_seq")
    rel = _literal(_q(table))
    return (
        "DO $$ DECLARE old_seq text; last bigint; called boolean; BEGIN "
        f"PERFORM set_config('lock_timeout', {_literal(LOCK_TIMEOUT)}, true); "
        f"IF (SELECT attidentity FROM pg_attribute WHERE attrelid = to_regclass({rel}) "
        f"AND attname = {_literal(column)}) IN ('a', 'd') THEN "
        f"old_seq := pg_get_serial_sequence({rel}, {_literal(column)}); "
        "EXECUTE format('SELECT last_value, is_called FROM %s', old_seq) INTO last, called; "
        f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} DROP IDENTITY; "
        f"CREATE SEQUENCE {_q(seq)} AS bigint OWNED BY {_q(table)}.{_q(column)}; "
        f"PERFORM setval({_literal(_q(seq))}, last, called); "
        f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} "
        f"SET DEFAULT nextval({_literal(_q(seq))}::regclass); "
        "END IF; END $$"
    )


def sequence_to_identity_sql(table: str, column: str = "id") -> str:
    """The reverse of ``identity_to_sequence_sql``: ``GENERATED BY DEFAULT AS IDENTITY``
    again, continuing where the sequence stood; idempotent (a ``DO`` block)."""
    seq = _short(f"{table}_{column}_seq")
    rel = _literal(_q(table))
    return (
        "DO $$ DECLARE last bigint; called boolean; BEGIN "
        f"PERFORM set_config('lock_timeout', {_literal(LOCK_TIMEOUT)}, true); "
        f"IF (SELECT attidentity FROM pg_attribute WHERE attrelid = to_regclass({rel}) "
        f"AND attname = {_literal(column)}) = '' THEN "
        f"SELECT last_value, is_called INTO last, called FROM {_q(seq)}; "
        f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} DROP DEFAULT; "
        f"DROP SEQUENCE {_q(seq)}; "
        f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} ADD GENERATED BY DEFAULT AS IDENTITY; "
        f"PERFORM setval(pg_get_serial_sequence({rel}, {_literal(column)}), last, called); "
        "END IF; END $$"
    )


def drop_organization_index(table: str, index: str) -> migrations.RunSQL:
    """The migration operation that drops ``index``, a tenant table's index on
    ``(organization_id)`` alone (the one Django makes for the organization foreign key),
    which the primary key ``(organization_id, id)`` makes redundant: every lookup by
    organization, and the cascade of an organization's deletion, can use the key's
    leading column (PostgreSQL manual, 11.3 "Multicolumn Indexes"), while every write
    paid one more index entry.

    ``DROP INDEX CONCURRENTLY IF EXISTS`` (PostgreSQL manual, DROP INDEX: no lock that
    blocks reads or writes of ``table``); backwards ``CREATE INDEX CONCURRENTLY IF NOT
    EXISTS <index> ON <table> (organization_id)``. Neither runs in a transaction: the
    migration must say ``atomic = False``. Pair it with the model state's ``AlterField``
    to ``db_index=False`` in a ``SeparateDatabaseAndState``."""
    return migrations.RunSQL(
        sql=f"DROP INDEX CONCURRENTLY IF EXISTS {_q(index)}",
        reverse_sql=(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_q(index)} ON {_q(table)} (organization_id)"
        ),
    )
