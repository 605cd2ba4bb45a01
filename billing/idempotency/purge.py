"""Deleting expired ``Idempotency-Key`` answers: the service behind ``manage.py
purge_idempotency_keys`` and the daily job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone

from billing.models import IdempotencyKey
from tenancy.context import cross_tenant


@dataclass(frozen=True)
class PurgeBatch:
    """One batch of ``idempotency_key_purge_expired``: its number (from 1), the keys it
    deleted, and the running total."""

    number: int
    deleted: int
    total: int


# A MATERIALIZED CTE, not ``WHERE (organization_id, key) IN (SELECT ... LIMIT)``: the
# planner may rescan an IN subquery, and with SKIP LOCKED each rescan picks other rows, so
# one "batch" could delete far more than its LIMIT.
_PURGE_SQL = (
    "WITH batch AS MATERIALIZED ("
    "SELECT organization_id, key FROM billing_idempotency_keys WHERE expires_at <= %s "
    "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "DELETE FROM billing_idempotency_keys k USING batch "
    "WHERE k.organization_id = batch.organization_id AND k.key = batch.key"
)


def idempotency_key_purge_expired(
    *,
    now: datetime | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    on_batch=None,
) -> int:
    """Delete every organization's keys that expired at or before ``now`` (default: now,
    UTC), ``batch_size`` rows per transaction (oldest expiry first, through the
    ``expires_at`` index), through the explicit cross-tenant path. Rows locked by a
    request that is replacing its expired key are skipped (``SKIP LOCKED``), never waited
    for. The service behind ``manage.py purge_idempotency_keys`` and the daily job.

    Args:
        dry_run: count the expired keys and delete nothing.
        on_batch: called with a ``PurgeBatch`` after each batch (progress output).
    Returns:
        the number of keys deleted (with ``dry_run``: that would be deleted).
    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = now or timezone.now()
    if dry_run:
        with cross_tenant(reason="count expired idempotency keys"):
            return IdempotencyKey.objects.filter(expires_at__lte=now).count()
    total, number = 0, 0
    while True:
        with cross_tenant(reason="purge expired idempotency keys"), connection.cursor() as cursor:
            cursor.execute(_PURGE_SQL, [now, batch_size])
            deleted = cursor.rowcount
        if not deleted:
            return total
        number += 1
        total += deleted
        if on_batch is not None:
            on_batch(PurgeBatch(number=number, deleted=deleted, total=total))
        if deleted < batch_size:
            return total
