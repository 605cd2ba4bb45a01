"""PostgreSQL row-level security for every tenant table, derived from the models.

There is no per-table list to maintain. A table is a *tenant table* when its
model has a NOT NULL foreign key named ``organization`` to
``tenancy.Organization`` -- which is exactly what subclassing
``tenancy.models.TenantModel`` gives (``User.organization`` is nullable: users
are not tenant-owned). An auto-created many-to-many through table that points
at a tenant table is covered too: its rows are visible when the tenant row they
point at is (an ``EXISTS`` on the RLS-protected parent).

For each tenant table this module makes sure (idempotently) that:

* row-level security is ENABLEd and FORCEd (``FORCE`` so the table owner is
  subject to it as well; PostgreSQL manual, "Row Security Policies" and
  ``ALTER TABLE ... FORCE ROW LEVEL SECURITY``);
* the policy ``tenant_isolation`` (all commands, USING and WITH CHECK) is
  ``POLICY_PREDICATE`` below;
* every foreign key to another tenant table is also a composite
  ``(organization_id, x_id) -> (organization_id, id)`` foreign key, so a row can
  never reference another organization's row (the referenced table gets a
  ``UNIQUE (organization_id, id)`` for it).

Three places use it: the migration operation
``tenancy.rls.operations.TenantRowLevelSecurity`` (``forwards_sql`` / ``backwards_sql``,
static SQL in the migration's transaction, printed by ``sqlmigrate``), the
``migrate`` command's post-migrate backstop (``sync_tables``: only the tables of
the applied migration state whose app has an applied RLS migration, and no DDL at
all on a table that already matches), and ``check_isolation``, which reads the
catalog.

The predicate fails closed: only ``app.rls_enabled = 'off'`` (the database
default written by ``migrate`` from ``RLS_ENABLED=false``, or the
transaction-local value of ``tenant_context``) disables it. Unset, empty or
``on`` restrict to ``app.current_org``; with no organization that is no row.
``app.cross_tenant = 'on'`` (transaction-local, only set by
``tenancy.context.cross_tenant``) is the one explicit cross-tenant path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import OperationalError, models, transaction

from tenancy.rls import RowLevelSecurityError

POLICY_NAME = "tenant_isolation"
OWN_MEMBERSHIP_POLICY = "own_memberships"

#: ``current_setting(name, true)`` returns NULL when unset and '' once cleared; NULLIF
#: turns both into NULL, and ``organization_id = NULL`` is never true (fails closed).
CURRENT_ORG = "NULLIF(current_setting('app.current_org', true), '')::uuid"
GATES = (
    "current_setting('app.rls_enabled', true) = 'off'"
    " OR current_setting('app.cross_tenant', true) = 'on'"
)
POLICY_PREDICATE = f"({GATES} OR organization_id = {CURRENT_ORG})"

#: Tables with an ``organization_id`` column that are deliberately not tenant-owned.
EXEMPT_TABLES = {
    "tenancy_user": "User.organization is a nullable default-organization pointer; users log "
    "in before any organization is chosen, so the users table is global.",
}

#: Extra permissive SELECT policies, by table: memberships are also readable by their
#: own user (``app.current_user``), so a caller can list all their organizations and
#: the token endpoint can pick a default one before an organization is in context.
EXTRA_SELECT_POLICIES = {
    "tenancy_membership": (
        OWN_MEMBERSHIP_POLICY,
        "user_id = NULLIF(current_setting('app.current_user', true), '')::bigint",
    ),
}


@dataclass
class TenantTable:
    """What RLS needs to know about one table: its name, and its same-tenant references.

    ``references``: ``[(column, referenced tenant table)]``. For a through table
    (``through_parent`` set) ``parent_column`` names the column pointing at the parent.
    ``app_label``: the app whose migrations own the table (the parent's app for a
    through table).
    """

    table: str
    references: list[tuple[str, str]] = field(default_factory=list)
    through_parent: str | None = None
    parent_column: str | None = None
    app_label: str = ""


def is_tenant_model(model) -> bool:
    """True for a concrete model with a NOT NULL ``organization`` FK to tenancy.Organization."""
    opts = model._meta
    if opts.abstract or opts.proxy or not opts.managed:
        return False
    try:
        org = opts.get_field("organization")
    except Exception:  # FieldDoesNotExist
        return False
    if not isinstance(org, models.ForeignKey) or org.null:
        return False
    target = org.remote_field.model
    return target._meta.app_label == "tenancy" and target._meta.model_name == "organization"


def tenant_tables(models_iterable) -> list[TenantTable]:
    """The tenant tables (and tenant M2M through tables) among ``models_iterable``."""
    tenant_models = [m for m in models_iterable if is_tenant_model(m)]
    tenant_db_tables = {m._meta.db_table for m in tenant_models}
    result = []
    for model in tenant_models:
        entry = TenantTable(model._meta.db_table, app_label=model._meta.app_label)
        for f in model._meta.local_fields:
            if isinstance(f, models.ForeignKey) and f.name != "organization":
                target = f.remote_field.model._meta.db_table
                if target in tenant_db_tables:
                    entry.references.append((f.column, target))
        result.append(entry)
        for m2m in model._meta.local_many_to_many:
            through = m2m.remote_field.through
            if through._meta.auto_created:
                result.append(
                    TenantTable(
                        through._meta.db_table,
                        through_parent=model._meta.db_table,
                        parent_column=m2m.m2m_column_name(),
                        app_label=model._meta.app_label,
                    )
                )
    return result


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _constraint_exists(cursor, table: str, name: str) -> bool:
    cursor.execute(
        "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
        [_q(table), name],
    )
    return cursor.fetchone() is not None


def _short(name: str) -> str:
    """A constraint name within PostgreSQL's 63-byte limit, stable for a given input."""
    if len(name) <= 63:
        return name
    import hashlib

    return name[:54] + "_" + hashlib.md5(name.encode()).hexdigest()[:8]


def org_unique_name(table: str) -> str:
    """Name (str, at most 63 bytes) of the ``UNIQUE (organization_id, id)`` constraint
    that composite same-organization foreign keys to ``table`` reference."""
    return _short(f"{table}_org_id_uniq")


def same_org_fk_name(table: str, column: str) -> str:
    """Name (str, at most 63 bytes) of the composite ``(organization_id, column) ->
    (organization_id, id)`` foreign key of ``table`` that twins the FK on ``column``."""
    return _short(f"{table}_{column}_same_org_fk")


@dataclass(frozen=True)
class Policy:
    """One policy as this module declares it: name, command (SQL keyword), USING and
    WITH CHECK expressions (SQL text; ``check`` None for SELECT-only policies)."""

    name: str
    command: str
    using: str
    check: str | None

    def create_sql(self, table_sql: str) -> str:
        """``CREATE POLICY`` for ``table_sql`` (an already quoted, possibly qualified name)."""
        sql = f"CREATE POLICY {self.name} ON {table_sql} FOR {self.command} USING {self.using}"
        if self.check is not None:
            sql += f" WITH CHECK {self.check}"
        return sql


def policies(entry: TenantTable) -> list[Policy]:
    """The policies ``entry``'s table must have (the tenant one, plus any extra SELECT one)."""
    if entry.through_parent:
        predicate = (
            f"(EXISTS (SELECT 1 FROM {_q(entry.through_parent)} p "
            f"WHERE p.id = {_q(entry.table)}.{_q(entry.parent_column)}))"
        )
    else:
        predicate = POLICY_PREDICATE
    result = [Policy(POLICY_NAME, "ALL", predicate, predicate)]
    extra = EXTRA_SELECT_POLICIES.get(entry.table)
    if extra:
        result.append(Policy(extra[0], "SELECT", f"({extra[1]})", None))
    return result


def enable_sql(entry: TenantTable) -> list[str]:
    """Statements that protect ``entry``'s table: ENABLE and FORCE row-level security,
    then (re)create each policy. Idempotent; run them in ONE transaction, or the table is
    briefly enabled with no policy (every row denied) between DROP and CREATE."""
    t = _q(entry.table)
    sql = [
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY",
    ]
    for policy in policies(entry):
        sql.append(f"DROP POLICY IF EXISTS {policy.name} ON {t}")
        sql.append(policy.create_sql(t))
    return sql


def disable_sql(entry: TenantTable) -> list[str]:
    """Statements that undo ``enable_sql`` (drop the policies, NO FORCE, DISABLE)."""
    t = _q(entry.table)
    sql = [f"DROP POLICY IF EXISTS {p.name} ON {t}" for p in policies(entry)]
    sql += [
        f"ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} DISABLE ROW LEVEL SECURITY",
    ]
    return sql


def _if_no_constraint(table: str, name: str, ddl: str) -> str:
    """A ``DO`` block running ``ddl`` unless ``table`` has constraint ``name`` (there is no
    ``ADD CONSTRAINT IF NOT EXISTS``); static SQL, so ``sqlmigrate`` can print it."""
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = "
        f"to_regclass({_literal(_q(table))}) AND conname = {_literal(name)}) THEN "
        f"{ddl}; END IF; END $$"
    )


def unique_sql(target: str) -> str:
    """Add ``UNIQUE (organization_id, id)`` to ``target`` if missing (idempotent)."""
    name = org_unique_name(target)
    return _if_no_constraint(
        target,
        name,
        f"ALTER TABLE {_q(target)} ADD CONSTRAINT {_q(name)} UNIQUE (organization_id, id)",
    )


def same_org_fk_sql(table: str, column: str, target: str) -> str:
    """Add the composite same-organization FK of ``table.column`` if missing (idempotent).
    Deferrable, like Django's own foreign keys."""
    name = same_org_fk_name(table, column)
    return _if_no_constraint(
        table,
        name,
        f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} "
        f"FOREIGN KEY (organization_id, {_q(column)}) "
        f"REFERENCES {_q(target)} (organization_id, id) DEFERRABLE INITIALLY DEFERRED",
    )


def forwards_sql(entries: list[TenantTable]) -> list[str]:
    """Every statement that protects ``entries`` (RLS, policies, composite FKs and the
    UNIQUE constraints they reference), idempotent and static: what the migration
    operation runs inside the migration's transaction and what ``sqlmigrate`` prints."""
    sql = []
    for entry in entries:
        sql += enable_sql(entry)
    for target in sorted({t for e in entries for _, t in e.references}):
        sql.append(unique_sql(target))
    for entry in entries:
        for column, target in entry.references:
            sql.append(same_org_fk_sql(entry.table, column, target))
    return sql


def backwards_sql(
    entries: list[TenantTable],
    fks: list[tuple[str, str]],
    uniques: list[str],
) -> list[str]:
    """Statements that remove what ``forwards_sql`` added: the composite FKs ``fks``
    (``[(table, column)]``), the UNIQUE constraints on ``uniques`` (tables), and RLS with
    its policies from ``entries``. ``IF EXISTS`` everywhere: idempotent."""
    sql = [
        f"ALTER TABLE {_q(t)} DROP CONSTRAINT IF EXISTS {_q(same_org_fk_name(t, c))}"
        for t, c in fks
    ]
    sql += [
        f"ALTER TABLE {_q(t)} DROP CONSTRAINT IF EXISTS {_q(org_unique_name(t))}" for t in uniques
    ]
    for entry in entries:
        sql += disable_sql(entry)
    return sql


#: How long the post-migrate sync waits for a table's lock (PostgreSQL ``lock_timeout``)
#: before giving up: ALTER TABLE / CREATE POLICY need ACCESS EXCLUSIVE, and while the sync
#: waits behind a long transaction every request on that table queues behind the sync.
LOCK_TIMEOUT = "5s"

_POLCMD = {"ALL": "*", "SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d"}

_POLICY_ROWS = """
SELECT polname, polcmd::text, polpermissive, polroles::oid[],
       pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
FROM pg_policy WHERE polrelid = to_regclass(%s) AND polname = ANY(%s)
"""


def _policy_rows(cursor, table_sql: str, names: list[str]) -> dict[str, tuple]:
    cursor.execute(_POLICY_ROWS, [table_sql, names])
    return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def _expected_policy_rows(connection, entry: TenantTable, schema: str) -> dict[str, tuple]:
    """What ``pg_policy`` holds once ``entry``'s policies exist, as PostgreSQL deparses them
    (``pg_get_expr`` normalises casts and parentheses, so text from ``policies`` cannot be
    compared directly). Found by creating them on a TEMP copy of the table in a
    transaction that is rolled back: no lock beyond ACCESS SHARE on the real table."""
    names = [p.name for p in policies(entry)]
    temp = f"pg_temp.{_q(entry.table)}"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE {_q(entry.table)} (LIKE {_q(schema)}.{_q(entry.table)})")
        for policy in policies(entry):
            cursor.execute(policy.create_sql(temp))
        rows = _policy_rows(cursor, temp, names)
        transaction.set_rollback(True, using=connection.alias)
    return rows


def rls_up_to_date(connection, entry: TenantTable) -> bool:
    """True when ``entry``'s table already has ENABLE and FORCE row-level security and
    exactly the declared policies (command, PERMISSIVE, TO PUBLIC, same USING and WITH
    CHECK expressions); reads ``pg_class`` and ``pg_policy``, changes nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, n.nspname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            [_q(entry.table)],
        )
        row = cursor.fetchone()
        if row is None or not (row[0] and row[1]):
            return False
        schema = row[2]
        actual = _policy_rows(cursor, _q(entry.table), [p.name for p in policies(entry)])
    if set(actual) != {p.name for p in policies(entry)}:
        return False
    for policy in policies(entry):
        command, permissive, roles = actual[policy.name][:3]
        if command != _POLCMD[policy.command] or not permissive or list(roles) != [0]:
            return False
    expected = _expected_policy_rows(connection, entry, schema)
    return all(actual[name][3:] == expected[name][3:] for name in expected)


def _table_exists(connection, table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [_q(table)])
        return cursor.fetchone()[0]


def sync_tables(connection, entries: list[TenantTable], *, lock_timeout: str = LOCK_TIMEOUT):
    """Make ``entries`` protected (RLS, policies, composite same-organization FKs), changing
    only what differs from the declaration; the post-migrate backstop of ``migrate``.

    A table that already matches gets no DDL at all (no ACCESS EXCLUSIVE lock, no policy
    re-created). A table that needs a change gets all of it in ONE transaction with
    ``lock_timeout`` (so no session ever sees the table enabled without its policy);
    the referenced tables' UNIQUE constraints come first, each in its own transaction.
    Tables that do not exist are skipped. Must run as the tables' owner.

    Returns:
        list[str]: a log of the changes made (``"rls <table>"``, ``"unique ..."``,
        ``"fk ..."``); empty when everything was up to date.

    Raises:
        RowLevelSecurityError: a table's lock was not granted within ``lock_timeout`` (tables
        done before it stay done; rerun ``migrate``).
    """
    if connection.vendor != "postgresql":
        return []
    entries = [e for e in entries if _table_exists(connection, e.table)]
    plan: list[tuple[str, list[str], list[str]]] = []
    with connection.cursor() as cursor:
        for target in sorted({t for e in entries for _, t in e.references}):
            if not _constraint_exists(cursor, target, org_unique_name(target)):
                plan.append(
                    (target, [unique_sql(target)], [f"unique {target}(organization_id, id)"])
                )
    for entry in entries:
        statements, log = [], []
        if not rls_up_to_date(connection, entry):
            statements += enable_sql(entry)
            log.append(f"rls {entry.table}")
        with connection.cursor() as cursor:
            for column, target in entry.references:
                if not _constraint_exists(
                    cursor, entry.table, same_org_fk_name(entry.table, column)
                ):
                    statements.append(same_org_fk_sql(entry.table, column, target))
                    log.append(f"fk {entry.table}(organization_id, {column}) -> {target}")
        if statements:
            plan.append((entry.table, statements, log))
    done: list[str] = []
    for table, statements, log in plan:
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
                for statement in statements:
                    cursor.execute(statement)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
                raise RowLevelSecurityError(
                    f"row-level security: table {table} could not be locked within "
                    f"{lock_timeout} (a long transaction holds it); nothing was changed on "
                    f"it. Done before it: {done or 'nothing'}. Rerun migrate."
                ) from exc
            raise
        done += log
    return done
