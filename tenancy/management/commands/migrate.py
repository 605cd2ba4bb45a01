"""``manage.py migrate`` as the owner, then the app role and row-level security.

Django's ``migrate``, run on a connection that stays the login (owner) role
(``tenancy.db_roles.owner_connection``). After every migrate, with or without an
app label (a table created by ``migrate some_app`` must be usable by the app role
too), but not after ``--plan`` or ``--check``, it also creates/grants the app role,
writes the database default ``app.rls_enabled`` from ``RLS_ENABLED``, and
re-applies row-level security to every tenant table of every app
(``tenancy.rls``), so a tenant table whose migration forgot
``TenantRowLevelSecurity`` is still protected.
"""

from django.apps import apps
from django.conf import settings
from django.core.management.commands import migrate
from django.db import connections

from tenancy import db_roles, rls


class Command(migrate.Command):
    help = migrate.Command.help + (
        " Runs as the owner role, then grants the app role and applies row-level security "
        "to every tenant table."
    )

    def handle(self, *args, **options):
        using = options["database"]
        with db_roles.owner_connection(using):
            super().handle(*args, **options)
            if options.get("plan") or options.get("check_unapplied"):
                return
            connection = connections[using]
            done = db_roles.ensure_app_role(connection, rls_enabled=settings.RLS_ENABLED)
            done += rls.apply_to_tables(connection, rls.tenant_tables(apps.get_models()))
            if options["verbosity"] >= 2:
                for line in done:
                    self.stdout.write(f"  {line}")
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"Row-level security: {sum(d.startswith('rls ') for d in done)} tenant "
                    f"table(s) protected; RLS_ENABLED={settings.RLS_ENABLED}."
                )
