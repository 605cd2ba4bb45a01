"""``manage.py backfill_organizations``: a default organization for every user without one."""

import contextlib
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, transaction

from tenancy.backfill import BackfillBatchResult, organizations_backfill_batch
from tenancy.context import cross_tenant
from tenancy.models import User


class Command(BaseCommand):
    help = (
        "Give every user without an organization a default one: their earliest membership's "
        "organization if they have one, else one per firm domain (colleagues share it) or, "
        "for public mail domains (gmail.com...), one per address; slug from the domain or the "
        "local part, suffixed on collision with an unrelated organization; owner membership "
        "for the first user, member for the others. Batched set-based SQL, one transaction "
        "per batch: safe to interrupt and rerun (it resumes), idempotent (a second run changes "
        "nothing). Exit 1 on error."
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
            help="Run every batch and report, then roll each back: writes nothing.",
        )

    def handle(self, *args, **opts):
        batch_size, max_batches = opts["batch_size"], opts["max_batches"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if max_batches is not None and max_batches < 1:
            raise CommandError("--max-batches must be at least 1.")
        dry = opts["dry_run"]
        with cross_tenant(reason="backfill_organizations: count"):
            total = User.objects.filter(organization__isnull=True).count()
        if total == 0:
            self.stdout.write("Nothing to do: every user has an organization.")
            return
        self.stdout.write(
            f"{'Dry run: ' if dry else ''}{total} user(s) without an organization; "
            f"batches of {batch_size}."
        )
        totals = BackfillBatchResult()
        started = time.monotonic()
        # A dry run does every batch inside one transaction that it rolls back at the end, so
        # later batches see what earlier ones would have created (and the counts are true).
        outer = transaction.atomic() if dry else contextlib.nullcontext()
        try:
            with outer:
                after_id, batches = self._run(batch_size, max_batches, total, totals, started)
                if dry:
                    transaction.set_rollback(True)
        except _BatchFailed as failed:
            exc, batches, after_id = failed.args
            raise CommandError(
                f"backfill failed in batch {batches + 1} (users after id {after_id}): "
                f"{_first_error(exc)}. The batch was rolled back. "
                f"{totals.users} user(s) were done in committed batches; rerun to resume."
            ) from exc
        elapsed = time.monotonic() - started
        verb = "would be" if dry else "were"
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Dry run, nothing written: ' if dry else 'Done: '}{totals.users} user(s) "
                f"{verb} assigned in {batches} batch(es), {elapsed:.1f}s; "
                f"{totals.organizations_created} organization(s) and "
                f"{totals.memberships_created} membership(s) {verb} created; "
                f"{totals.via_existing_membership} user(s) {verb} given their existing "
                "membership's organization."
            )
        )
        if not dry and max_batches is not None and totals.users < total:
            self.stdout.write(f"Stopped after {batches} batch(es); rerun to continue.")

    def _run(self, batch_size, max_batches, total, totals, started):
        after_id, batches = 0, 0
        try:
            while max_batches is None or batches < max_batches:
                result = organizations_backfill_batch(after_id=after_id, batch_size=batch_size)
                if not result.users:
                    break
                batches += 1
                after_id = result.last_user_id
                for field in (
                    "users",
                    "organizations_created",
                    "memberships_created",
                    "via_existing_membership",
                ):
                    setattr(totals, field, getattr(totals, field) + getattr(result, field))
                elapsed = max(time.monotonic() - started, 1e-6)
                rate = totals.users / elapsed
                eta = (total - totals.users) / rate if rate else 0
                self.stdout.write(
                    f"batch {batches}: {totals.users}/{total} users "
                    f"({100 * totals.users / total:.1f}%), {rate:,.0f} users/s, "
                    f"ETA {eta:,.0f}s",
                )
                self.stdout.flush()
        except DatabaseError as exc:
            raise _BatchFailed(exc, batches, after_id) from exc
        return after_id, batches


class _BatchFailed(Exception):
    pass


def _first_error(exc: BaseException) -> str:
    """The first line of the database error that failed the batch (PostgreSQL's DETAIL and
    CONTEXT lines dropped); its repr if it has no text."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
