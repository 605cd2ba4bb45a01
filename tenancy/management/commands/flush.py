"""``manage.py flush`` as the owner: TRUNCATE is not granted to the app role (it would
bypass row-level security), so emptying the database is an owner's job."""

from django.core.management.base import CommandError
from django.core.management.commands import flush
from django.db import connections

from tenancy.jobs import JOB_TABLES
from tenancy.rls import RowLevelSecurityError, roles


class Command(flush.Command):
    """Django's ``flush`` (empties every table; same options), run on a connection that stays
    the owner (login) role via ``tenancy.rls.roles.owner_connection``. It empties the job
    queue's tables too (``tenancy.jobs.JOB_TABLES``): procrastinate's models are unmanaged,
    so Django's own flush leaves them, and a flushed database would still hold jobs
    pointing at rows that are gone."""

    help = flush.Command.help + " Runs as the owner role; empties the job queue too."

    def handle(self, **options):
        using = options["database"]
        if options["interactive"]:
            confirm = input(
                f'Flush every table of the "{connections[using].settings_dict["NAME"]}" '
                "database, the job queue included? This IRREVERSIBLY DESTROYS all its data.\n"
                "    Type 'yes' to continue, or 'no' to cancel: "
            )
            if confirm != "yes":
                self.stdout.write("Flush cancelled.")
                return
        try:
            with roles.owner_connection(using):
                _truncate_job_tables(connections[using])
                return super().handle(**{**options, "interactive": False})
        except RowLevelSecurityError as exc:
            raise CommandError(str(exc)) from exc


def _truncate_job_tables(connection) -> None:
    """``TRUNCATE`` the job tables that exist (none before ``migrate procrastinate``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT array_agg(t) FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
            [list(JOB_TABLES)],
        )
        tables = cursor.fetchone()[0] or []
        if tables:
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
