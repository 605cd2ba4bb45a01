"""``manage.py backfill_organizations``: a default organization for every user without one."""

import time

from django.core.management.base import BaseCommand, CommandError

from tenancy.backfill import (
    BackfillError,
    BackfillTotals,
    organizations_backfill,
    staff_without_organization,
    users_without_organization,
)

#: How many of the organizations a dry run would create it lists.
SAMPLE_SIZE = 10


class Command(BaseCommand):
    help = (
        "Give every user without an organization a default one: their earliest membership's "
        "organization if they have one, else one per firm domain (colleagues share it) or, "
        "for public mail domains (gmail.com...), one per address; slug from the domain or the "
        "local part, suffixed on collision with an unrelated organization; owner membership "
        "for the first user, member for the others. Staff users and superusers are skipped "
        "(they work in the admin) and counted. Batched set-based SQL, one transaction "
        "per batch: safe to interrupt and rerun (it resumes), idempotent (a second run changes "
        "nothing). --dry-run says what it would create, with a sample. Exit 1 on error."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size", type=int, default=5000, help="Users per batch/transaction (5000)."
        )
        parser.add_argument(
            "--max-batches", type=int, default=None, help="Stop after N batches (resume later)."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Run every batch, say what would be created (counts and a sample of the "
            "organizations), then roll back: writes nothing.",
        )

    def handle(self, *args, **opts):
        batch_size, max_batches = opts["batch_size"], opts["max_batches"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if max_batches is not None and max_batches < 1:
            raise CommandError("--max-batches must be at least 1.")
        dry = opts["dry_run"]
        total = users_without_organization()
        staff = staff_without_organization()
        if staff:
            self.stdout.write(
                f"Skipping {staff} staff user(s) or superuser(s) without an organization: "
                "staff work in the admin (cross-tenant) and are never made a firm's owner."
            )
        if total == 0:
            self.stdout.write("Nothing to do: every user has an organization.")
            return
        self.stdout.write(
            f"{'Dry run: ' if dry else ''}{total} user(s) without an organization; "
            f"batches of {batch_size}."
        )
        started = time.monotonic()

        def progress(totals: BackfillTotals) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = totals.users / elapsed
            eta = (total - totals.users) / rate if rate else 0
            self.stdout.write(
                f"batch {totals.batches}: {totals.users}/{total} users "
                f"({100 * totals.users / total:.1f}%), {rate:,.0f} users/s, ETA {eta:,.0f}s"
            )
            self.stdout.flush()

        sample: list = []
        try:
            totals = organizations_backfill(
                batch_size=batch_size,
                max_batches=max_batches,
                dry_run=dry,
                on_batch=progress,
                sample=sample if dry else None,
                sample_size=SAMPLE_SIZE,
            )
        except BackfillError as exc:
            raise CommandError(str(exc)) from exc
        elapsed = time.monotonic() - started
        if sample:
            shown = len(sample)
            self.stdout.write(
                f"Would create {totals.organizations_created} organization(s)"
                + (f"; the first {shown} by slug:" if shown < totals.organizations_created else ":")
            )
            for planned in sample:
                self.stdout.write(
                    f"  would create organization '{planned.slug}' ({planned.backfill_key}): "
                    f"owner {planned.owner or '(none)'}, {planned.members} member(s) in all"
                )
        verb = "would be" if dry else "were"
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Dry run, nothing written: ' if dry else 'Done: '}{totals.users} user(s) "
                f"{verb} assigned in {totals.batches} batch(es), {elapsed:.1f}s; "
                f"{totals.organizations_created} organization(s) and "
                f"{totals.memberships_created} membership(s) {verb} created; "
                f"{totals.via_existing_membership} user(s) {verb} given their existing "
                "membership's organization."
            )
        )
        if not dry and max_batches is not None and totals.users < total:
            self.stdout.write(f"Stopped after {totals.batches} batch(es); rerun to continue.")
