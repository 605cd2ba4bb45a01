"""The one-off backfill behind ``manage.py backfill_organizations``: a default organization
for every user without one.

Per user: the organization of their earliest membership if they have one; otherwise the
default organization of their *key* -- ``domain:<domain>`` for a firm's domain (colleagues
share it), ``email:<address>`` for a public mail domain (``PUBLIC_MAIL_DOMAINS``) --
created if missing (``Organization.backfill_key``; named after the domain or the
address's local part, slug from that name, suffixed ``-2``, ``-3``... when another
organization has it), with an owner membership for its first (lowest id) user and member
memberships for the rest. Then ``User.organization`` is set.

Each batch runs in one transaction through ``cross_tenant`` (it writes memberships of
many organizations): a crash loses at most the batch in flight, and a rerun resumes with
the users still without an organization.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, fields

from django.db import DatabaseError, connection, transaction

from tenancy.context import cross_tenant
from tenancy.models import User

#: Mail domains shared by unrelated people: their users get one organization each, named
#: after the address's local part. Any other domain is a firm: its users share one.
PUBLIC_MAIL_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.co.uk",
    "outlook.com",
    "hotmail.com",
    "hotmail.co.uk",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "mail.com",
    "yandex.com",
    "yandex.ru",
    "zoho.com",
    "fastmail.com",
    "hey.com",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "qq.com",
    "163.com",
)

# A user's organization key and slug base, computed in SQL for a whole batch.
_KEY_SQL = """
  CASE WHEN lower(split_part(u.email, '@', 2)) = ANY(%(public)s)
       THEN 'email:' || lower(u.email)
       ELSE 'domain:' || lower(split_part(u.email, '@', 2)) END
"""
_SLUG_SOURCE_SQL = """
  CASE WHEN lower(split_part(u.email, '@', 2)) = ANY(%(public)s)
       THEN lower(split_part(u.email, '@', 1))
       ELSE lower(split_part(u.email, '@', 2)) END
"""

_BATCH_SQL = f"""
CREATE TEMP TABLE backfill_batch ON COMMIT DROP AS
SELECT u.id, u.email, ({_KEY_SQL}) AS key,
       left(coalesce(nullif(trim(both '-' from regexp_replace({_SLUG_SOURCE_SQL},
            '[^a-z0-9]+', '-', 'g')), ''), 'org'), 90) AS base_slug,
       ({_SLUG_SOURCE_SQL}) AS org_name,
       (SELECT m.organization_id FROM tenancy_membership m WHERE m.user_id = u.id
         ORDER BY m.created_at, m.id LIMIT 1) AS org_id,
       false AS via_membership
FROM tenancy_user u
WHERE u.organization_id IS NULL AND u.id > %(after)s
ORDER BY u.id
LIMIT %(limit)s
"""


class BackfillError(Exception):
    """The backfill stopped: a batch hit a database error (its transaction was rolled
    back; the batches before it stay committed, so a rerun resumes), or it was called
    with a batch size or batch limit below 1. The message says which batch failed, the
    first line of the database error (the ``DatabaseError`` is the ``__cause__``) and how
    many users the committed batches did. ``backfill_organizations`` exits 1 with it."""


@dataclass
class BackfillBatchResult:
    """One batch of ``organizations_backfill_batch``: counts, and the last user id seen
    (the next batch starts after it; ``None``: there was nothing left)."""

    users: int = 0
    organizations_created: int = 0
    memberships_created: int = 0
    via_existing_membership: int = 0
    last_user_id: int | None = None


@dataclass
class BackfillTotals:
    """What ``organizations_backfill`` did (or, in a dry run, would do): counts summed
    over its ``batches``."""

    batches: int = 0
    users: int = 0
    organizations_created: int = 0
    memberships_created: int = 0
    via_existing_membership: int = 0

    def add(self, batch: BackfillBatchResult) -> None:
        """Count ``batch`` in: one more batch and its counts."""
        self.batches += 1
        for field in fields(BackfillBatchResult):
            if field.name != "last_user_id":
                setattr(self, field.name, getattr(self, field.name) + getattr(batch, field.name))


def _free_slugs(cursor, wanted: dict[str, str]) -> dict[str, str]:
    """``{key: base_slug}`` -> ``{key: slug}``: the base if free, else ``base-2``, ``base-3``...

    Free means: not an existing organization's slug and not given to another key of this
    batch. A few indexed ``slug = ANY(...)`` queries per batch, never one per row.
    """
    result: dict[str, str] = {}
    taken_here: set[str] = set()
    pending = dict(sorted(wanted.items()))
    suffix_start = 1  # first pass: the bare base; then -2..-21, -22..-41, ...
    while pending:
        candidates = {}
        for key, base in pending.items():
            if suffix_start == 1:
                candidates[key] = [base]
            else:
                candidates[key] = [
                    f"{base[:90]}-{n}" for n in range(suffix_start, suffix_start + 20)
                ]
        flat = sorted({c for cs in candidates.values() for c in cs})
        cursor.execute("SELECT slug FROM tenancy_organization WHERE slug = ANY(%s)", [flat])
        taken = {row[0] for row in cursor.fetchall()} | taken_here
        still = {}
        for key, base in pending.items():
            free = next((c for c in candidates[key] if c not in taken), None)
            if free is None:
                still[key] = base
            else:
                result[key] = free
                taken.add(free)
                taken_here.add(free)
        pending = still
        suffix_start = 2 if suffix_start == 1 else suffix_start + 20
    return result


def users_without_organization() -> int:
    """How many users have no default organization (``User.organization`` NULL)."""
    with cross_tenant(reason="backfill_organizations: count"):
        return User.objects.filter(organization__isnull=True).count()


def organizations_backfill_batch(*, after_id: int, batch_size: int) -> BackfillBatchResult:
    """Give the next ``batch_size`` users without an organization (id > ``after_id``) one.

    Per user: the organization of their earliest membership if they have one; otherwise
    the default organization of their key -- ``domain:<domain>`` for a firm's domain,
    ``email:<address>`` for a public mail domain (``PUBLIC_MAIL_DOMAINS``) -- created if
    missing (``Organization.backfill_key``; slug from the domain or the local part,
    suffixed ``-2``, ``-3``... when an unrelated organization has it), with an owner
    membership for its first (lowest id) user and member memberships for the rest. Then
    ``User.organization`` is set.

    Set-based SQL, one transaction per batch through ``cross_tenant`` (it writes
    memberships of many organizations): a crash loses at most the batch in flight, and a
    rerun resumes with the users still without an organization. Idempotent.
    """
    params = {"public": list(PUBLIC_MAIL_DOMAINS), "after": after_id, "limit": batch_size}
    result = BackfillBatchResult()
    with cross_tenant(reason="backfill_organizations"), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('goldleaves.backfill_organizations'))"
        )
        # Transaction-local planner settings. jit off: big row estimates would make PostgreSQL
        # JIT-compile these short statements (~0.1s each, more than it saves).
        # force_custom_plan: the foreign-key checks of the inserted/updated rows run as cached
        # plans; one made when tenancy_organization was small is a sequential scan, and the
        # table grows with every batch (seen: each batch slower than the last).
        cursor.execute(
            "SELECT set_config('jit', 'off', true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true)"
        )
        cursor.execute(_BATCH_SQL, params)
        _backfill_temp_batch(cursor, result)
        # Inside an outer transaction (--dry-run) ON COMMIT DROP would come too late for the
        # next batch. Only on success: after an error the transaction is aborted (a DROP
        # would fail and hide the real error), and its rollback removes the table anyway.
        cursor.execute("DROP TABLE IF EXISTS backfill_batch")
    return result


def _backfill_temp_batch(cursor, result: BackfillBatchResult) -> None:
    cursor.execute("SELECT count(*), max(id), count(org_id) FROM backfill_batch")
    result.users, result.last_user_id, result.via_existing_membership = cursor.fetchone()
    if not result.users:
        return
    cursor.execute("UPDATE backfill_batch SET via_membership = true WHERE org_id IS NOT NULL")
    cursor.execute(
        """UPDATE backfill_batch b SET org_id = o.id FROM tenancy_organization o
           WHERE b.org_id IS NULL AND o.backfill_key = b.key"""
    )
    cursor.execute(
        """SELECT DISTINCT ON (key) key, base_slug, org_name FROM backfill_batch
           WHERE org_id IS NULL ORDER BY key, id"""
    )
    new = cursor.fetchall()
    if new:
        slugs = _free_slugs(cursor, {key: base for key, base, _ in new})
        keys = [key for key, _, _ in new]
        cursor.execute(
            """INSERT INTO tenancy_organization
                 (id, name, slug, plan_tier, stripe_customer_id, billing_timezone,
                  created_at, backfill_key)
               SELECT gen_random_uuid(), left(n.name, 200), n.slug, 'starter', '', 'UTC',
                      now(), n.key
               FROM unnest(%s::text[], %s::text[], %s::text[]) AS n(key, slug, name)""",
            [keys, [slugs[k] for k in keys], [name for _, _, name in new]],
        )
        result.organizations_created = cursor.rowcount
        cursor.execute(
            """UPDATE backfill_batch b SET org_id = o.id FROM tenancy_organization o
               WHERE b.org_id IS NULL AND o.backfill_key = b.key"""
        )
    cursor.execute(
        """INSERT INTO tenancy_membership (organization_id, user_id, role, created_at)
           SELECT b.org_id, b.id,
                  CASE WHEN row_number() OVER (PARTITION BY b.org_id ORDER BY b.id) = 1
                        AND NOT EXISTS (SELECT 1 FROM tenancy_membership m
                                        WHERE m.organization_id = b.org_id
                                          AND m.role = 'owner')
                       THEN 'owner' ELSE 'member' END,
                  now()
           FROM backfill_batch b
           WHERE NOT b.via_membership
           ON CONFLICT (organization_id, user_id) DO NOTHING"""
    )
    result.memberships_created = cursor.rowcount
    cursor.execute(
        """UPDATE tenancy_user u SET organization_id = b.org_id FROM backfill_batch b
           WHERE u.id = b.id AND u.organization_id IS NULL"""
    )


def organizations_backfill(
    *,
    batch_size: int = 5000,
    max_batches: int | None = None,
    dry_run: bool = False,
    on_batch: Callable[[BackfillTotals], None] | None = None,
) -> BackfillTotals:
    """Run ``organizations_backfill_batch`` until no user is left without an organization
    (or ``max_batches`` batches ran), each batch in its own committed transaction.

    A dry run does every batch inside one transaction that it rolls back at the end, so
    later batches see what earlier ones would have created and the counts are true;
    nothing is written.

    Args:
        batch_size: users per batch (and per transaction), at least 1.
        max_batches: stop after this many batches (at least 1); ``None``: no limit.
        dry_run: roll everything back at the end.
        on_batch: called after each batch with the running totals (progress output).
    Returns:
        ``BackfillTotals``: batches and counts (what would be done, in a dry run).
    Raises:
        BackfillError: ``batch_size`` or ``max_batches`` below 1 (nothing done), or a
            batch failed: it was rolled back, the batches before it stay committed (none
            in a dry run) and a rerun resumes.
    """
    if batch_size < 1:
        raise BackfillError(f"batch size must be at least 1, not {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise BackfillError(f"max batches must be at least 1, not {max_batches}")
    totals = BackfillTotals()
    after_id = 0
    try:
        with transaction.atomic() if dry_run else contextlib.nullcontext():
            while max_batches is None or totals.batches < max_batches:
                result = organizations_backfill_batch(after_id=after_id, batch_size=batch_size)
                if not result.users:
                    break
                after_id = result.last_user_id
                totals.add(result)
                if on_batch is not None:
                    on_batch(totals)
            if dry_run:
                transaction.set_rollback(True)
    except DatabaseError as exc:
        raise BackfillError(
            f"backfill failed in batch {totals.batches + 1} (users after id {after_id}): "
            f"{_first_error(exc)}. The batch was rolled back. "
            f"{totals.users} user(s) were done in committed batches; rerun to resume."
        ) from exc
    return totals


def _first_error(exc: BaseException) -> str:
    """The first line of the database error that failed the batch (PostgreSQL's DETAIL and
    CONTEXT lines dropped); its repr if it has no text."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
