"""``manage.py check_isolation``: fail if any tenant table or the app role can leak rows."""

from django.core.management.base import BaseCommand, CommandError

from tenancy.rls.isolation import isolation_problems, isolation_warnings


class Command(BaseCommand):
    help = (
        "Read the PostgreSQL catalog and fail (exit 1), listing each table, if a table with "
        "organization_id lacks ENABLE/FORCE ROW LEVEL SECURITY or its tenant_isolation policy, "
        "if the app role can bypass row-level security, if a unique constraint of a tenant "
        "table omits organization_id, if a tenant-to-tenant foreign key has no composite "
        "same-organization twin, or if the database default app.rls_enabled does not match "
        "RLS_ENABLED. Connects as the app role, like the requests. Warnings (e.g. a login "
        "role that could bypass RLS after RESET ROLE) are printed; --strict makes them fail "
        "too (production: DEPLOY.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default", help="Database alias (default).")
        parser.add_argument(
            "--strict",
            action="store_true",
            help="Fail on warnings too (production, where the app logs in as the app role).",
        )

    def handle(self, *args, **opts):
        problems = isolation_problems(opts["database"])
        warnings = isolation_warnings(opts["database"])
        for line in warnings:
            self.stderr.write(f"  warning: {line}")
        if opts["strict"]:
            problems += [f"(strict) {w}" for w in warnings]
        if problems:
            for line in problems:
                self.stderr.write(f"  {line}")
            raise CommandError(f"check_isolation: {len(problems)} problem(s) found.")
        self.stdout.write(self.style.SUCCESS("check_isolation: every tenant table is isolated."))
