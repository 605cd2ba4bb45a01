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

Three places call ``apply_to_models``: the migration operation
``tenancy.operations.TenantRowLevelSecurity`` (each app's migration, reversible),
the ``migrate`` command after every full migrate (so a table added later by any
app is covered even if its migration forgot the operation), and
``check_isolation`` reads the catalog as the backstop.

The predicate fails closed: only ``app.rls_enabled = 'off'`` (the database
default written by ``migrate`` from ``RLS_ENABLED=false``, or the
transaction-local value of ``tenant_context``) disables it. Unset, empty or
``on`` restrict to ``app.current_org``; with no organization that is no row.
``app.cross_tenant = 'on'`` (transaction-local, only set by
``tenancy.context.cross_tenant``) is the one explicit cross-tenant path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import models

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
    """

    table: str
    references: list[tuple[str, str]] = field(default_factory=list)
    through_parent: str | None = None
    parent_column: str | None = None


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
        entry = TenantTable(model._meta.db_table)
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
                    )
                )
    return result


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
    return _short(f"{table}_org_id_uniq")


def same_org_fk_name(table: str, column: str) -> str:
    return _short(f"{table}_{column}_same_org_fk")


def enable_sql(entry: TenantTable) -> list[str]:
    """Statements (idempotent when run in order) that protect ``entry``'s table."""
    t = _q(entry.table)
    if entry.through_parent:
        predicate = (
            f"(EXISTS (SELECT 1 FROM {_q(entry.through_parent)} p "
            f"WHERE p.id = {t}.{_q(entry.parent_column)}))"
        )
    else:
        predicate = POLICY_PREDICATE
    sql = [
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {POLICY_NAME} ON {t}",
        f"CREATE POLICY {POLICY_NAME} ON {t} FOR ALL USING {predicate} WITH CHECK {predicate}",
    ]
    extra = EXTRA_SELECT_POLICIES.get(entry.table)
    if extra:
        name, using = extra
        sql.append(f"DROP POLICY IF EXISTS {name} ON {t}")
        sql.append(f"CREATE POLICY {name} ON {t} FOR SELECT USING ({using})")
    return sql


def disable_sql(entry: TenantTable) -> list[str]:
    t = _q(entry.table)
    sql = [f"DROP POLICY IF EXISTS {POLICY_NAME} ON {t}"]
    extra = EXTRA_SELECT_POLICIES.get(entry.table)
    if extra:
        sql.append(f"DROP POLICY IF EXISTS {extra[0]} ON {t}")
    sql += [
        f"ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {t} DISABLE ROW LEVEL SECURITY",
    ]
    return sql


def apply_to_tables(connection, entries: list[TenantTable]) -> list[str]:
    """Protect ``entries`` (policies, composite same-tenant FKs). Returns a log of changes.

    Must run as the tables' owner (migrations). Idempotent.
    """
    if connection.vendor != "postgresql":
        return []
    done = []
    with connection.cursor() as cursor:
        for entry in entries:
            for statement in enable_sql(entry):
                cursor.execute(statement)
            done.append(f"rls {entry.table}")
        referenced = {target for e in entries for _, target in e.references}
        for target in sorted(referenced):
            name = org_unique_name(target)
            if not _constraint_exists(cursor, target, name):
                cursor.execute(
                    f"ALTER TABLE {_q(target)} ADD CONSTRAINT {_q(name)} "
                    "UNIQUE (organization_id, id)"
                )
                done.append(f"unique {target}(organization_id, id)")
        for entry in entries:
            for column, target in entry.references:
                name = same_org_fk_name(entry.table, column)
                if not _constraint_exists(cursor, entry.table, name):
                    cursor.execute(
                        f"ALTER TABLE {_q(entry.table)} ADD CONSTRAINT {_q(name)} "
                        f"FOREIGN KEY (organization_id, {_q(column)}) "
                        f"REFERENCES {_q(target)} (organization_id, id) "
                        "DEFERRABLE INITIALLY DEFERRED"
                    )
                    done.append(f"fk {entry.table}(organization_id, {column}) -> {target}")
    return done


def remove_from_tables(connection, entries: list[TenantTable]) -> None:
    """Undo ``apply_to_tables`` for ``entries`` (reverse migrations)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for entry in entries:
            for column, _target in entry.references:
                cursor.execute(
                    f"ALTER TABLE {_q(entry.table)} DROP CONSTRAINT IF EXISTS "
                    f"{_q(same_org_fk_name(entry.table, column))}"
                )
        for target in {t for e in entries for _, t in e.references}:
            cursor.execute(
                f"ALTER TABLE {_q(target)} DROP CONSTRAINT IF EXISTS {_q(org_unique_name(target))}"
            )
        for entry in entries:
            for statement in disable_sql(entry):
                cursor.execute(statement)
