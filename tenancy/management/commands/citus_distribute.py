"""``manage.py citus_distribute``: make the reference and distributed tables on Citus."""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from tenancy.citus import distribution_plan, uses_citus
from tenancy.rls import roles


class Command(BaseCommand):
    help = (
        "Distribute the database by organization_id on Citus: create_reference_table for "
        "organizations, users and the tables linked to them (the auth tables...), then "
        "create_distributed_table(<table>, 'organization_id') for every tenant table, "
        "colocated, parents first. Prints the plan; without --dry-run runs it, one table at "
        "a time (each statement copies the table's rows to its shards), skipping what "
        "pg_dist_partition says is done already, so it is safe to run again after a "
        "failure. Refuses (exit 1) on a database without the citus extension, and when a "
        "key keeps a tenant table from being distributed. Runs as the login (owner) role. "
        "See DEPLOY.md, 'Scaling out with Citus'."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan (would ...), run nothing."
        )
        parser.add_argument(
            "--shard-count",
            type=int,
            default=None,
            help="Shards of the colocation group the first tenant table starts (default: "
            "Citus's citus.shard_count). Applies to a first distribution only.",
        )
        parser.add_argument("--database", default="default", help="Database alias (default).")

    def handle(self, *args, **opts):
        if opts["shard_count"] is not None and opts["shard_count"] < 1:
            raise CommandError("--shard-count must be a positive integer.")
        connection = connections[opts["database"]]
        name = connection.settings_dict["NAME"]
        if opts["dry_run"]:  # reads the catalog only: any role will do
            return self._run(connection, opts, citus=uses_citus(connection))
        if not uses_citus(connection):
            raise CommandError(
                f"citus_distribute: database {name} has no citus extension (pg_extension); "
                "nothing was run. On a Citus coordinator run CREATE EXTENSION citus first "
                "(DEPLOY.md, 'Scaling out with Citus'), or use --dry-run to see the plan."
            )
        with roles.owner_connection(opts["database"]) as owner:
            return self._run(owner, opts, citus=True)

    def _run(self, connection, opts, *, citus: bool):
        dry_run = opts["dry_run"]
        name = connection.settings_dict["NAME"]
        plan = distribution_plan(connection, shard_count=opts["shard_count"])
        where = "Citus" if citus else "PostgreSQL without the citus extension"
        self.stdout.write(f"Citus distribution plan for database {name} ({where}):")
        for step in plan.steps:
            if step.done:
                self.stdout.write(f"  skip         {step.table}: {step.done}")
            else:
                verb = "would run" if dry_run else "run"
                self.stdout.write(f"  {step.kind:<12} {step.table}: {verb} {step.sql};")
        for note in plan.notes:
            self.stdout.write(f"  note: {note}")
        for problem in plan.problems:
            self.stderr.write(f"  problem: {problem}")
        pending = plan.pending
        done = len(plan.steps) - len(pending)
        if plan.problems:
            raise CommandError(
                f"citus_distribute: {len(plan.problems)} problem(s) keep the tables from "
                "being distributed (see above); nothing was run."
            )
        if dry_run:
            self.stdout.write(
                f"Dry run: would run {len(pending)} statement(s); {done} table(s) already done."
            )
            return
        for index, step in enumerate(pending, start=1):
            started = time.monotonic()
            self.stdout.write(f"[{index}/{len(pending)}] {step.kind} {step.table} ...", ending="")
            self.stdout.flush()
            try:
                with connection.cursor() as cursor:
                    cursor.execute(step.sql)
            except Exception as exc:
                self.stdout.write(" failed")
                raise CommandError(
                    f"citus_distribute: {step.table} failed: {exc}. The tables before it are "
                    "distributed; fix the cause and run the command again (it skips them)."
                ) from exc
            self.stdout.write(f" done ({time.monotonic() - started:.1f} s)")
        self.stdout.write(
            self.style.SUCCESS(
                f"citus_distribute: {len(pending)} table(s) distributed, {done} already were."
            )
        )
