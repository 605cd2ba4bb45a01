"""Migration operation that puts row-level security on an app's tenant tables.

Each app with tenant models ends its migrations with::

    from tenancy.rls.operations import TenantRowLevelSecurity

    operations = [..., TenantRowLevelSecurity()]

Forwards, it protects every tenant table of that app as it stands in the migration
state (see ``tenancy.rls.policies`` for what "tenant table" means and what is applied), with
static, idempotent SQL run through ``schema_editor.execute`` inside the migration's
transaction: ``sqlmigrate`` prints it (and runs nothing) and no session ever sees a
table enabled without its policy.

Backwards, it removes only what its own migration added: RLS from the tables that
were not already protected by an earlier ``TenantRowLevelSecurity`` of the same app
(so reversing ``billing 0004`` leaves ``billing_events``, protected by ``0003``, as
``0003`` left it), and the composite foreign keys that did not exist before. If its
own migration cannot be found in the migration graph, what was protected before it is
unknown, and the reverse fails closed: it raises ``IrreversibleError`` and removes
nothing.

``protected_tables(connection)`` is what ``manage.py migrate``'s backstop keeps
protected: the tenant tables of the *applied* migration state (not the current
models, which may be ahead of a database migrated backwards) of every app with an
applied ``TenantRowLevelSecurity``. ``manage.py check_isolation`` fails on any
table that is still missed (e.g. an app that never added the operation).
"""

from django.db import migrations
from django.db.migrations.exceptions import IrreversibleError
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from tenancy.rls import policies


class TenantRowLevelSecurity(migrations.operations.base.Operation):
    """ENABLE + FORCE RLS, the ``tenant_isolation`` policy and composite same-tenant FKs
    on the tenant tables of the migration's app. No state change; PostgreSQL only."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label, state):
        pass

    @staticmethod
    def _entries(app_label, state) -> list[policies.TenantTable]:
        return [
            e for e in policies.tenant_tables(state.apps.get_models()) if e.app_label == app_label
        ]

    def _execute(self, schema_editor, statements):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement, params=None)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._execute(schema_editor, policies.forwards_sql(self._entries(app_label, to_state)))

    def _protected_before_migration(self, app_label) -> list[policies.TenantTable]:
        """The app's tenant tables (with their references) as an earlier
        ``TenantRowLevelSecurity`` of the same app left them, i.e. in the state just
        before this operation's migration; ``[]`` if no earlier migration of the app has
        the operation.

        Raises:
            IrreversibleError: this operation's migration is not in the migration graph
                (e.g. the operation was built outside a migration file, or its migration
                was replaced by a squash), so what earlier migrations protected is
                unknown. Fails closed: rather than strip row-level security from tables
                an earlier migration protected, the reverse refuses and strips nothing.
        """
        loader = MigrationLoader(None, ignore_no_migrations=True)
        key = next(
            (
                k
                for k, migration in loader.disk_migrations.items()
                if k[0] == app_label and any(op is self for op in migration.operations)
            ),
            None,
        )
        if key is None or key not in loader.graph.nodes:
            raise IrreversibleError(
                f"TenantRowLevelSecurity of app {app_label!r} refuses to remove row-level "
                "security: its migration is not in the migration graph (the operation was "
                "built outside a migration file, or its migration is replaced by a squashed "
                "one), so which tables an earlier migration of the app protected is unknown. "
                "Nothing was removed."
            )
        earlier = [
            k
            for k in loader.graph.forwards_plan(key)
            if k != key and k[0] == app_label and _has_rls_operation(loader.graph.nodes[k])
        ]
        if not earlier:
            return []
        return self._entries(app_label, loader.project_state(key, at_end=False))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        current = self._entries(app_label, from_state)
        kept = self._protected_before_migration(app_label)
        kept_tables = {e.table for e in kept}
        kept_fks = {(e.table, column) for e in kept for column, _ in e.references}
        kept_targets = {t for e in kept for _, t in e.references}
        strip = [e for e in current if e.table not in kept_tables]
        fks = [
            (e.table, column)
            for e in current
            for column, _ in e.references
            if (e.table, column) not in kept_fks
        ]
        targets = sorted({t for e in current for _, t in e.references} - kept_targets)
        self._execute(schema_editor, policies.backwards_sql(strip, fks, targets))

    def describe(self):
        return "Row-level security on this app's tenant tables"

    @property
    def migration_name_fragment(self):
        return "row_level_security"


def _has_rls_operation(migration) -> bool:
    return any(isinstance(op, TenantRowLevelSecurity) for op in migration.operations)


def protected_tables(connection) -> list[policies.TenantTable]:
    """The tenant tables ``manage.py migrate`` keeps protected after migrating: those of
    the APPLIED migration state (``django_migrations``; what the database holds now, even
    after ``migrate <app> <earlier>``) whose app has at least one applied migration with
    ``TenantRowLevelSecurity``. So a later migration that forgot the operation is still
    covered, and a reversed RLS migration is not re-applied behind the operator's back."""
    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    applied = [k for k in executor.recorder.applied_migrations() if k in graph.nodes]
    if not applied:
        return []
    apps_with_rls = {k[0] for k in applied if _has_rls_operation(graph.nodes[k])}
    state = executor.loader.project_state(applied, at_end=True)
    return [
        e for e in policies.tenant_tables(state.apps.get_models()) if e.app_label in apps_with_rls
    ]
