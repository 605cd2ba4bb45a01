"""``manage.py onboard_tenant``: create an organization with its owner, one or from a CSV."""

import csv
import io
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenancy.context import tenant_context
from tenancy.invitations import invitation_create, invitation_open_for
from tenancy.models import MembershipRole, PlanTier
from tenancy.services import (
    OnboardingError,
    organization_onboard,
    organization_onboard_problems,
    organization_slug,
)

CSV_COLUMNS = ("name", "owner_email", "plan")


class Command(BaseCommand):
    """``onboard_tenant``: ``tenancy.services.organization_onboard`` for one tenant
    (``--name``/``--owner-email``) or every row of a CSV (``--csv FILE``, columns
    ``name,owner_email,plan``), all in one transaction.

    Every row is validated completely first (``organization_onboard_problems``, plus two
    CSV rows with one slug and different owners): every problem of every row is reported
    at once, as ``CommandError`` (exit status 1), and nothing is written. Then each row
    is reported (``created ...`` or ``unchanged ...``; ``would create ...`` with
    ``--dry-run``, which rolls back). Without ``--password`` an owner who cannot log in
    yet is invited (``tenancy.invitations``): the job worker emails them a single-use
    link to set their password; an open invitation is not sent again.
    """

    help = (
        "Onboard a tenant: create the organization (slug from the name), its owner user and "
        "owner membership. Without --password the owner is invited by email (a single-use "
        "link, sent by the job worker) to set a password. Idempotent on the slug: an existing "
        "organization with the same owner is left unchanged; one with a different owner is "
        "refused. Either --name/--owner-email or --csv FILE (columns name,owner_email,plan). "
        "Every row is checked first; any problem writes nothing and exits 1."
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
            "--password",
            help="Owner's password if the user is new. Without it the owner is invited by "
            "email to set one.",
        )
        parser.add_argument("--csv", type=Path, help="CSV file with columns name,owner_email,plan.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Validate and say what would be created; write nothing.",
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
        self._validate(rows)

        dry_run = opts["dry_run"]
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
                except OnboardingError as exc:  # a concurrent onboarding since validation
                    raise CommandError(f"{where}{exc}; nothing was written.") from None
                self._report(where, result, dry_run=dry_run)
                if opts["password"] is None:
                    self._invite(where, result, dry_run=dry_run)
            if dry_run:
                self.stdout.write("Dry run: rolled back, nothing was written.")
                transaction.set_rollback(True)

    def _validate(self, rows):
        """Every problem of every row, at once (``CommandError``), before any write."""
        errors, bad_rows = [], set()
        by_slug: dict[str, tuple[int, str, str]] = {}  # slug -> first (row, name, email)
        for line, name, email, plan in rows:
            where = f"row {line}: " if line else ""
            problems = organization_onboard_problems(name=name, owner_email=email, plan_tier=plan)
            slug = organization_slug(name)
            if slug and email and slug in by_slug and by_slug[slug][2].lower() != email.lower():
                first_line, first_name, first_email = by_slug[slug]
                problems.append(
                    f"{name!r} has the organization slug {slug!r} of row "
                    f"{first_line} ({first_name!r}) with a different owner "
                    f"({email} here, {first_email} there)"
                )
            elif slug:
                by_slug.setdefault(slug, (line, name, email))
            errors.extend(f"{where}{problem}" for problem in problems)
            if problems:
                bad_rows.add(line)
        if errors and not rows[0][0]:  # --name/--owner-email: one line
            raise CommandError("; ".join(errors) + "; nothing was written.")
        if errors:
            raise CommandError(
                f"{len(errors)} problem(s) in {len(bad_rows)} row(s); nothing was written:\n  "
                + "\n  ".join(errors)
            )

    def _report(self, where, result, *, dry_run: bool):
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
        verb = "would create " if dry_run else "created "
        self.stdout.write(self.style.SUCCESS(f"{where}{verb}" + ", ".join(parts)))
        for note in result.notes:
            self.stdout.write(f"{where}{note}")

    def _invite(self, where, result, *, dry_run: bool):
        """Invite the owner when they cannot log in yet and have no open invitation."""
        org, owner = result.organization, result.owner
        if owner.has_usable_password():
            return
        with tenant_context(org):
            open_invitation = invitation_open_for(organization=org, email=owner.email)
            if open_invitation is not None:
                self.stdout.write(
                    f"{where}an invitation to {owner.email} is still open (expires "
                    f"{open_invitation.expires_at:%Y-%m-%d %H:%M} UTC); not sent again."
                )
                return
            invitation_create(
                organization=org, acting_user=None, email=owner.email, role=MembershipRole.OWNER
            )
        hours = settings.INVITATION_TTL_HOURS
        if dry_run:
            self.stdout.write(f"{where}would invite {owner.email} (owner) by email")
            return
        self.stdout.write(
            f"{where}invitation sent to {owner.email} (owner of '{org.slug}'): the job worker "
            f"emails a single-use link to set a password, valid {hours} hours (EMAIL_URL; "
            "in development the email is printed in the worker's output)."
        )

    def _read_csv(self, path: Path):
        """The CSV's rows as ``(line, name, owner_email, plan)``. Raises ``CommandError``
        for a path that is not a readable file, bytes that are not UTF-8 (naming the
        line), a malformed CSV (naming the line), a missing column and no data rows."""
        if not path.is_file():
            raise CommandError(f"CSV file not found (or not a file): {path}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            problem = f"line {line}: not UTF-8 (byte {exc.start}); nothing was written."
            raise CommandError(problem) from None
        try:
            return self._rows(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise CommandError(f"malformed CSV: {exc}; nothing was written.") from None

    def _rows(self, reader: csv.DictReader) -> list[tuple[int, str, str, str]]:
        missing = [c for c in ("name", "owner_email") if c not in (reader.fieldnames or [])]
        if missing:
            raise CommandError(
                f"CSV header must have columns {','.join(CSV_COLUMNS)}; "
                f"missing: {', '.join(missing)}"
            )
        rows = []
        for record in reader:
            name = (record.get("name") or "").strip()
            email = (record.get("owner_email") or "").strip()
            plan = (record.get("plan") or PlanTier.STARTER).strip() or PlanTier.STARTER
            rows.append((reader.line_num, name, email, plan))
        if not rows:
            raise CommandError("CSV has no data rows.")
        return rows
