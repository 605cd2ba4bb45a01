"""``manage.py purge_idempotency_keys``: delete expired ``Idempotency-Key`` responses."""

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from billing.idempotency.purge import idempotency_key_purge_expired


class Command(BaseCommand):
    """``manage.py purge_idempotency_keys [--batch-size N] [--dry-run]``.

    Runs ``billing.idempotency.purge.idempotency_key_purge_expired`` (every organization, one
    transaction per batch) and prints one progress line per batch and a summary. Safe to
    run at any time and repeatedly (daily is enough): an expired key is already ignored
    by the API, so the purge only reclaims space.
    """

    help = (
        "Delete the stored Idempotency-Key responses of every organization that expired "
        "(older than IDEMPOTENCY_KEY_TTL_HOURS), in batches of --batch-size rows, one "
        "transaction per batch, with progress. --dry-run only counts them. Exits 1 on a "
        "database error (batches done before it stay done; run it again)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Keys deleted per transaction (default 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the expired keys; delete nothing."
        )

    def handle(self, *args, **opts):
        """Purge (or, with ``--dry-run``, count) the keys expired now.

        Raises:
            CommandError: ``--batch-size`` below 1, or a database error (exit 1).
        """
        batch_size = opts["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        now = timezone.now()
        ttl = settings.IDEMPOTENCY_KEY_TTL_HOURS
        if opts["dry_run"]:
            count = idempotency_key_purge_expired(now=now, dry_run=True)
            self.stdout.write(
                f"Dry run: would delete {count:,} expired idempotency key(s) "
                f"(expired at or before {now.isoformat()}; keys live {ttl} h)."
            )
            return
        started = time.monotonic()

        def progress(batch):
            rate = batch.total / max(time.monotonic() - started, 1e-6)
            self.stdout.write(
                f"batch {batch.number}: {batch.deleted:,} deleted "
                f"({batch.total:,} so far, {rate:,.0f} keys/s)"
            )

        try:
            total = idempotency_key_purge_expired(now=now, batch_size=batch_size, on_batch=progress)
        except DatabaseError as exc:
            raise CommandError(f"purge failed: {exc}") from exc
        seconds = time.monotonic() - started
        self.stdout.write(
            f"Done: {total:,} expired idempotency key(s) deleted in {seconds:.1f} s "
            f"(expired at or before {now.isoformat()}; keys live {ttl} h)."
        )
