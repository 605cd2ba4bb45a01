"""``manage.py migrate`` as the owner, then the app role and row-level security.

Django's ``migrate``, run on a connection that stays the login (owner) role
(``tenancy.rls.roles.owner_connection``). After every migrate, with or without an
app label or target (a table created by ``migrate some_app`` must be usable by the
app role too), but not after ``--plan`` or ``--check``, it also:

* creates/grants the app role and writes the database default ``app.rls_enabled``
  ``'on'`` (skipped when it already is; ``tenancy.rls.roles``);
* runs the row-level-security backstop (``tenancy.rls.policies.sync_tables``) on
  ``tenancy.rls.operations.protected_tables``: the tenant tables of the APPLIED
  migration state whose app has an applied ``TenantRowLevelSecurity``. So after
  ``migrate billing 0003`` it does not touch the tables 0004 created (they are
  gone), after ``migrate cases 0003`` it does not re-apply what the reverse of
  ``cases 0004`` removed, and a later migration of an RLS app that forgot the
  operation is still covered. A table that already matches gets no DDL; a table
  that needs a change gets it in one transaction with a ``lock_timeout``.
"""

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands import migrate
from django.db import connections

from tenancy.rls import RowLevelSecurityError, operations, policies, roles


def enforcement_note() -> str:
    """One sentence: whether the row-level-security policies are enforced for requests and
    jobs (``RLS_ENABLED``), and what it means when they are not."""
    if settings.RLS_ENABLED:
        return "enforced for requests and jobs (RLS_ENABLED=true)."
    return (
        "NOT enforced (RLS_ENABLED=false): requests and jobs set app.rls_enabled='off', so "
        "only the ORM's organization filter keeps tenants apart; set RLS_ENABLED=true once "
        "validated (DEPLOY.md)."
    )


class Command(migrate.Command):
    """Django's ``migrate`` (same options) as the owner role, then the app role, the
    ``app.rls_enabled`` database default and the row-level-security backstop, as the
    module docstring describes. A ``RowLevelSecurityError`` (a lock not granted in time,
    a role or default the login role may not write) exits 1 with its message."""

    help = migrate.Command.help + (
        " Runs as the owner role, then grants the app role and applies row-level security "
        "to the tenant tables of every app whose RLS migration is applied."
    )

    def handle(self, *args, **options):
        try:
            self._migrate(*args, **options)
        except RowLevelSecurityError as exc:
            raise CommandError(str(exc)) from exc

    def _migrate(self, *args, **options):
        using = options["database"]
        with roles.owner_connection(using):
            super().handle(*args, **options)
            if options.get("plan") or options.get("check_unapplied"):
                return
            connection = connections[using]
            done = roles.ensure_app_role(connection)
            protected = operations.protected_tables(connection)
            done += policies.sync_tables(connection, protected)
            if options["verbosity"] >= 2:
                for line in done:
                    self.stdout.write(f"  {line}")
            if options["verbosity"] >= 1:
                changed = sum(d.startswith(("rls ", "unique ", "fk ")) for d in done)
                self.stdout.write(
                    f"Row-level security: {changed} change(s) to tenant tables "
                    f"({len(protected)} have their policies); " + enforcement_note()
                )
