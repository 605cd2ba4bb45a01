"""``manage.py flush`` as the owner: TRUNCATE is not granted to the app role (it would
bypass row-level security), so emptying the database is an owner's job."""

from django.core.management.base import CommandError
from django.core.management.commands import flush

from tenancy.rls import RowLevelSecurityError, roles


class Command(flush.Command):
    """Django's ``flush`` (empties every table; same options), run on a connection that stays
    the owner (login) role via ``tenancy.rls.roles.owner_connection``."""

    help = flush.Command.help + " Runs as the owner role."

    def handle(self, **options):
        try:
            with roles.owner_connection(options["database"]):
                return super().handle(**options)
        except RowLevelSecurityError as exc:
            raise CommandError(str(exc)) from exc
