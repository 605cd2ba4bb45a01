"""Migration operation that puts row-level security on an app's tenant tables.

Each app with tenant models ends its migrations with::

    from tenancy.operations import TenantRowLevelSecurity

    operations = [..., TenantRowLevelSecurity()]

It protects every tenant table of that app as it stands in the migration state
(see ``tenancy.rls`` for what "tenant table" means and what is applied), and is
reversible. ``manage.py migrate`` also re-applies the same rules to every
tenant table after a full migrate, and ``manage.py check_isolation`` fails on
any table it missed, so a forgotten operation is caught, not silently open.
"""

from django.db import migrations

from tenancy import rls


class TenantRowLevelSecurity(migrations.operations.base.Operation):
    """ENABLE + FORCE RLS, the ``tenant_isolation`` policy and composite same-tenant FKs
    on the tenant tables of the migration's app. No state change; PostgreSQL only."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label, state):
        pass

    def _entries(self, app_label, state):
        apps = state.apps
        return [
            e
            for e in rls.tenant_tables(apps.get_models())
            if e.table in {m._meta.db_table for m in apps.get_app_config(app_label).get_models()}
            or (
                e.through_parent
                and e.through_parent
                in {m._meta.db_table for m in apps.get_app_config(app_label).get_models()}
            )
        ]

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        rls.apply_to_tables(schema_editor.connection, self._entries(app_label, to_state))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        rls.remove_from_tables(schema_editor.connection, self._entries(app_label, from_state))

    def describe(self):
        return "Row-level security on this app's tenant tables"

    @property
    def migration_name_fragment(self):
        return "row_level_security"
