"""``manage.py check_isolation``: fail if any tenant table or the app role can leak rows."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenancy.rls.isolation import isolation_problems, isolation_warnings


class Command(BaseCommand):
    help = (
        "Read the PostgreSQL catalog and fail (exit 1), listing each table, if a table with "
        "organization_id lacks ENABLE/FORCE ROW LEVEL SECURITY or its tenant_isolation policy, "
        "if the app role can bypass row-level security, if the primary key or a unique "
        "constraint of a tenant table omits organization_id, if a tenant-to-tenant foreign "
        "key has no composite same-organization twin or is a single-column one, if a table "
        "that is not a tenant table references one (both keep Citus from distributing by "
        "organization_id), or if the database default app.rls_enabled is not 'on'. Connects "
        "as the app role, like the requests. Warnings (one login: DATABASE_OWNER_URL unset, so "
        "the app SET ROLEs and RESET ROLE would return to a login role that may bypass RLS) "
        "are printed; --strict makes them fail too (production and CI: DEPLOY.md). Says "
        "plainly when the policies are in place but not enforced (RLS_ENABLED=false: the "
        "rollout's first step, DEPLOY.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default", help="Database alias (default).")
        parser.add_argument(
            "--strict",
            action="store_true",
            help="Fail on warnings too (production and CI: the app logs in as the app role).",
        )

    def handle(self, *args, **opts):
        problems = isolation_problems(opts["database"])
        warnings = isolation_warnings(opts["database"])
        for line in warnings:
            self.stderr.write(f"  warning: {line}")
        not_enforced = (
            "row-level security is NOT enforced: RLS_ENABLED=false, so every request and job "
            "sets app.rls_enabled='off' and the policies admit every row; only the ORM's "
            "organization filter keeps tenants apart. Set RLS_ENABLED=true (DEPLOY.md)."
        )
        if opts["strict"]:
            problems += [f"(strict) {w}" for w in warnings]
        if problems:
            for line in problems:
                self.stderr.write(f"  {line}")
            raise CommandError(f"check_isolation: {len(problems)} problem(s) found.")
        if settings.RLS_ENABLED:
            self.stdout.write(
                self.style.SUCCESS(
                    "check_isolation: every tenant table is isolated (policies in place and "
                    "enforced: RLS_ENABLED=true)."
                )
            )
            return
        self.stdout.write(
            "check_isolation: every tenant table has its row-level-security policies, but "
            + not_enforced
        )
