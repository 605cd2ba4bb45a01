"""``manage.py onboard_tenant``: create an organization with its owner, one or from a CSV."""

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenancy.models import PlanTier
from tenancy.services import OnboardingError, organization_onboard, organization_slug

CSV_COLUMNS = ("name", "owner_email", "plan")


class Command(BaseCommand):
    """``onboard_tenant``: ``tenancy.services.organization_onboard`` for one tenant
    (``--name``/``--owner-email``) or every row of a CSV (``--csv FILE``, columns
    ``name,owner_email,plan``), all in one transaction.

    Reports each row (``created ...`` or ``unchanged ...``). Any refused row -- bad input,
    two CSV rows with the same slug and different owners, or a slug that already exists
    with a different owner -- raises ``CommandError`` (exit status 1) and nothing is
    written, not even the rows before it. ``--dry-run`` validates and rolls back.
    """

    help = (
        "Onboard a tenant: create the organization (slug from the name), its owner user and "
        "owner membership. Idempotent on the slug: an existing organization with the same "
        "owner is left unchanged; one with a different owner is refused. Either "
        "--name/--owner-email or --csv FILE (columns name,owner_email,plan). Any refused row "
        "writes nothing and exits 1."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", help="Organization name, e.g. 'Acme Law'.")
        parser.add_argument("--owner-email", help="Owner's email (login).")
        parser.add_argument(
            "--plan",
            default=PlanTier.STARTER,
            choices=PlanTier.values,
            help="Plan tier (default starter).",
        )
        parser.add_argument(
            "--password", help="Owner's password if the user is new (else unusable)."
        )
        parser.add_argument("--csv", type=Path, help="CSV file with columns name,owner_email,plan.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Validate and report; write nothing."
        )

    def handle(self, *args, **opts):
        if opts["csv"]:
            if opts["name"] or opts["owner_email"]:
                raise CommandError("Use either --csv or --name/--owner-email, not both.")
            rows = self._read_csv(opts["csv"])
        elif opts["name"] and opts["owner_email"]:
            rows = [(0, opts["name"], opts["owner_email"], opts["plan"])]
        else:
            raise CommandError("Give --name and --owner-email, or --csv FILE.")

        with transaction.atomic():
            for line, name, email, plan in rows:
                where = f"row {line}: " if line else ""
                try:
                    result = organization_onboard(
                        name=name,
                        owner_email=email,
                        plan_tier=plan,
                        password=opts["password"],
                    )
                except OnboardingError as exc:
                    raise CommandError(f"{where}{exc}; nothing was written.") from None
                self._report(where, result)
            if opts["dry_run"]:
                self.stdout.write("Dry run: rolled back, nothing was written.")
                transaction.set_rollback(True)

    def _report(self, where, result):
        org = result.organization
        if not result.changed:
            self.stdout.write(
                f"{where}unchanged: organization '{org.slug}' and owner {result.owner.email} exist."
            )
            return
        parts = []
        if result.organization_created:
            parts.append(f"organization '{org.slug}' ({org.id}, plan {org.plan_tier})")
        if result.owner_created:
            parts.append(f"owner user {result.owner.email}")
        if result.membership_created:
            parts.append(f"owner membership of {result.owner.email}")
        self.stdout.write(self.style.SUCCESS(f"{where}created " + ", ".join(parts)))
        for note in result.notes:
            self.stdout.write(f"{where}{note}")

    def _read_csv(self, path: Path):
        if not path.exists():
            raise CommandError(f"CSV file not found: {path}")
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("name", "owner_email") if c not in (reader.fieldnames or [])]
            if missing:
                raise CommandError(
                    f"CSV header must have columns {','.join(CSV_COLUMNS)}; "
                    f"missing: {', '.join(missing)}"
                )
            rows, errors = [], []
            by_slug: dict[str, tuple[int, str, str]] = {}  # slug -> first (row, name, email)
            for record in reader:
                line = reader.line_num
                name = (record.get("name") or "").strip()
                email = (record.get("owner_email") or "").strip()
                plan = (record.get("plan") or PlanTier.STARTER).strip() or PlanTier.STARTER
                slug = organization_slug(name)
                if not name or not email:
                    errors.append(f"row {line}: name and owner_email are required")
                elif not slug:
                    errors.append(
                        f"row {line}: invalid organization name {name!r}: "
                        "it needs letters or digits"
                    )
                elif plan not in PlanTier.values:
                    errors.append(
                        f"row {line}: unknown plan {plan!r} (one of {', '.join(PlanTier.values)})"
                    )
                elif slug in by_slug and by_slug[slug][2].lower() != email.lower():
                    first_line, first_name, first_email = by_slug[slug]
                    errors.append(
                        f"row {line}: {name!r} has the organization slug {slug!r} of row "
                        f"{first_line} ({first_name!r}) with a different owner "
                        f"({email} here, {first_email} there)"
                    )
                else:
                    by_slug.setdefault(slug, (line, name, email))
                rows.append((line, name, email, plan))
        if errors:
            raise CommandError("Bad CSV rows; nothing was written:\n  " + "\n  ".join(errors))
        if not rows:
            raise CommandError("CSV has no data rows.")
        return rows
