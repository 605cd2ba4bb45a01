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
many organizations), and its work is one set-based SQL statement on the server
(``_BATCH_SQL``: the batch's users and their keys, the new organizations ``INSERT ...
SELECT ... RETURNING``, the memberships ``INSERT ... SELECT``, the users ``UPDATE ...
FROM``, as data-modifying ``WITH`` queries; PostgreSQL manual, 7.8.4 "Data-Modifying
Statements in WITH"): no Python runs per user, a crash loses at most the batch in flight,
and a rerun resumes with the users still without an organization.
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

# A user's organization key and organization name (also the source of its slug), and the
# slug base made from the name (of the key's first user ``b``), computed in SQL per batch.
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
_BASE_SLUG_SQL = """
  left(coalesce(nullif(trim(both '-' from regexp_replace(b.org_name,
       '[^a-z0-9]+', '-', 'g')), ''), 'org'), 90)
"""

# Free slugs for the keys of ``wanted(key, base_slug, org_name)`` (one row per key): the
# base if no organization has it and no earlier key (in key order) of the batch wants it;
# otherwise ``<base>-<n>``, the r-th free n >= 2 for the r-th such key of that base. Taken
# are the existing slugs and every base of the batch (each is either an organization's
# slug already or given bare to its first key). "<b>-<n>" has one decomposition (n has no
# '-'), so only keys of the same base compete for its suffixes. With t_1 < t_2 < ... the
# taken n >= 2 of a base, the r-th free n is r + 1 + #{i : t_i - i - 1 < r} (t_i - i - 1
# free numbers lie below t_i). The existing "<b>-..." slugs are found by an index range
# scan (``~>=~``/``~<~``: bytewise order, served by the slug's varchar_pattern_ops index).
_SLUG_CTES = """
ranked AS (
  SELECT w.key, w.base_slug, w.org_name,
         row_number() OVER (PARTITION BY w.base_slug ORDER BY w.key) AS rank,
         EXISTS (SELECT 1 FROM tenancy_organization o WHERE o.slug = w.base_slug) AS base_taken
  FROM wanted w
),
need_suffix AS (
  SELECT key, base_slug, org_name, row_number() OVER (PARTITION BY base_slug ORDER BY key) AS r
  FROM ranked WHERE rank > 1 OR base_taken
),
suffix_base AS (SELECT DISTINCT base_slug FROM need_suffix),
taken AS (
  SELECT base_slug, n, row_number() OVER (PARTITION BY base_slug ORDER BY n) AS i
  FROM (
    SELECT b.base_slug,
           CASE WHEN substr(o.slug, length(b.base_slug) + 2) ~ '^[1-9][0-9]{0,17}$'
                THEN substr(o.slug, length(b.base_slug) + 2)::bigint END AS n
    FROM suffix_base b
    JOIN tenancy_organization o
      ON o.slug ~>=~ (b.base_slug || '-') AND o.slug ~<~ (b.base_slug || '.')
    UNION
    SELECT b.base_slug, (regexp_match(w.base_slug, '-([1-9][0-9]{0,17})$'))[1]::bigint
    FROM suffix_base b
    JOIN wanted w ON (regexp_match(w.base_slug, '^(.*)-[1-9][0-9]{0,17}$'))[1] = b.base_slug
  ) AS t
  WHERE n >= 2
),
slugged AS (
  SELECT key, base_slug AS slug, org_name FROM ranked WHERE rank = 1 AND NOT base_taken
  UNION ALL
  SELECT s.key,
         s.base_slug || '-' || (s.r + 1 + (SELECT count(*) FROM taken t
                                           WHERE t.base_slug = s.base_slug
                                             AND t.n - t.i - 1 < s.r)),
         s.org_name
  FROM need_suffix s
)
"""

# The batch's user id range: the next ``limit`` users without an organization after
# ``after``. Its bounds reach ``_BATCH_SQL`` as literals (a custom plan), so the planner
# sees a range of about ``limit`` rows and reads it through the primary key.
_BOUNDS_SQL = """
SELECT max(id) FROM (
  SELECT id FROM tenancy_user
  WHERE organization_id IS NULL AND id > %(after)s AND NOT is_staff AND NOT is_superuser
  ORDER BY id LIMIT %(limit)s
) AS b
"""

# One batch, one statement. ``batch``: the users without an organization in the id range,
# their key and the organization of their earliest membership (``member_org``). ``keys``:
# per key of the users without one, its first (lowest id) user and its organization if it
# has one. ``wanted``: the keys without, named after their first user; ``new_org`` inserts
# those. ``key_org``: every key's organization, and whether its first user becomes the
# owner (a new organization has no member yet; an existing one may already have an owner).
# ``new_membership`` writes the memberships of existing organizations (``ON CONFLICT``: a
# concurrent invitation may have added one since the snapshot), ``new_org_membership``
# those of the new ones (which no other transaction can know yet: a plain INSERT, without
# the speculative insertion's extra index probe and WAL record), and ``updated`` sets
# ``User.organization``.
# Every sub-statement sees the snapshot taken at the statement's start, so rows inserted
# here reach the later steps through RETURNING (``new_org``), never through a table scan.
# The reads go through indexes: the memberships by a ``user_id`` range scan, each key's
# organization and owner by a scalar subquery on a unique or foreign-key index.
_BATCH_SQL = f"""
WITH first_membership AS (
  SELECT DISTINCT ON (m.user_id) m.user_id, m.organization_id
  FROM tenancy_membership m
  WHERE m.user_id > %(after)s AND m.user_id <= %(last)s
  ORDER BY m.user_id, m.created_at, m.id
),
batch AS MATERIALIZED (
  SELECT u.id, ({_KEY_SQL}) AS key, ({_SLUG_SOURCE_SQL}) AS org_name,
         fm.organization_id AS member_org
  FROM tenancy_user u LEFT JOIN first_membership fm ON fm.user_id = u.id
  WHERE u.organization_id IS NULL AND u.id > %(after)s AND u.id <= %(last)s
    AND NOT u.is_staff AND NOT u.is_superuser
),
keys AS MATERIALIZED (
  SELECT k.key, k.first_id,
         (SELECT o.id FROM tenancy_organization o WHERE o.backfill_key = k.key) AS org_id
  FROM (SELECT key, min(id) AS first_id FROM batch WHERE member_org IS NULL GROUP BY key) AS k
),
wanted AS (
  SELECT k.key, ({_BASE_SLUG_SQL}) AS base_slug, b.org_name
  FROM keys k JOIN batch b ON b.id = k.first_id
  WHERE k.org_id IS NULL
),
{_SLUG_CTES},
new_org AS (
  INSERT INTO tenancy_organization
    (id, name, slug, plan_tier, stripe_customer_id, billing_timezone, created_at, backfill_key)
  SELECT gen_random_uuid(), left(org_name, 200), slug, 'starter', '', 'UTC', now(), key
  FROM slugged
  RETURNING id, backfill_key
),
key_org AS (
  SELECT k.key, k.first_id, coalesce(k.org_id, n.id) AS org_id, k.org_id IS NOT NULL AS existing,
         k.org_id IS NOT NULL
           AND (SELECT 1 FROM tenancy_membership m
                WHERE m.organization_id = k.org_id AND m.role = 'owner' LIMIT 1) IS NULL
           AS needs_owner
  FROM keys k LEFT JOIN new_org n ON n.backfill_key = k.key
),
new_membership AS (
  INSERT INTO tenancy_membership (organization_id, user_id, role, created_at)
  SELECT o.org_id, b.id,
         CASE WHEN b.id = o.first_id AND o.needs_owner THEN 'owner' ELSE 'member' END, now()
  FROM batch b JOIN key_org o ON o.key = b.key
  WHERE b.member_org IS NULL AND o.existing
  ON CONFLICT (organization_id, user_id) DO NOTHING
  RETURNING 1
),
new_org_membership AS (
  INSERT INTO tenancy_membership (organization_id, user_id, role, created_at)
  SELECT o.org_id, b.id, CASE WHEN b.id = o.first_id THEN 'owner' ELSE 'member' END, now()
  FROM batch b JOIN key_org o ON o.key = b.key
  WHERE b.member_org IS NULL AND NOT o.existing
  RETURNING 1
),
updated AS (
  UPDATE tenancy_user u SET organization_id = coalesce(b.member_org, o.org_id)
  FROM batch b LEFT JOIN key_org o ON o.key = b.key AND b.member_org IS NULL
  WHERE u.id = b.id AND u.organization_id IS NULL AND u.id > %(after)s AND u.id <= %(last)s
  RETURNING 1
)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM batch WHERE member_org IS NOT NULL),
       (SELECT count(*) FROM new_org),
       (SELECT count(*) FROM new_membership) + (SELECT count(*) FROM new_org_membership),
       (SELECT count(*) FROM updated)
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

    Free means: not an existing organization's slug and not given to another key of the
    same call (keys in sorted order). The slug step of ``_BATCH_SQL``, run alone: one
    statement, whatever the number of keys or collisions.
    """
    keys = sorted(wanted)
    cursor.execute(
        "WITH wanted AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
        f"AS w(key, base_slug, org_name)), {_SLUG_CTES} SELECT key, slug FROM slugged",
        [keys, [wanted[k] for k in keys], keys],
    )
    return dict(cursor.fetchall())


def users_without_organization() -> int:
    """How many users the backfill would give an organization: those without a default
    organization (``User.organization`` NULL) who are neither staff nor superusers."""
    with cross_tenant(reason="backfill_organizations: count"):
        return User.objects.filter(
            organization__isnull=True, is_staff=False, is_superuser=False
        ).count()


def staff_without_organization() -> int:
    """How many staff users and superusers have no default organization: the backfill
    skips them (staff work in the admin, which is cross-tenant; making one the owner of an
    organization would give them a firm's data through the API as a member)."""
    return (
        User.objects.filter(organization__isnull=True)
        .exclude(is_staff=False, is_superuser=False)
        .count()
    )


@dataclass(frozen=True)
class PlannedOrganization:
    """One organization a dry run would create: ``slug``, ``name``, ``backfill_key``, the
    owner's email (``owner``; None when none) and how many users would be its members
    (the owner included)."""

    slug: str
    name: str
    backfill_key: str
    owner: str | None
    members: int


_PLANNED_SQL = """
SELECT o.slug, o.name, o.backfill_key,
       (SELECT u.email FROM tenancy_membership m JOIN tenancy_user u ON u.id = m.user_id
        WHERE m.organization_id = o.id AND m.role = 'owner' ORDER BY m.id LIMIT 1),
       (SELECT count(*) FROM tenancy_membership m WHERE m.organization_id = o.id)
FROM tenancy_organization o
WHERE o.backfill_key IS NOT NULL AND o.created_at = now()
ORDER BY o.slug
LIMIT %(limit)s
"""


def organizations_backfill_batch(*, after_id: int, batch_size: int) -> BackfillBatchResult:
    """Give the next ``batch_size`` users without an organization (id > ``after_id``) one,
    by the rule of this module's docstring.

    One transaction through ``cross_tenant``, serialised with any other run by a
    transaction-level advisory lock, and three statements whatever the batch size: the
    lock with the planner settings, the batch's id range (``_BOUNDS_SQL``) and the
    set-based ``_BATCH_SQL``. Idempotent: a user who has an organization is never picked
    again.

    Returns:
        ``BackfillBatchResult``; ``users`` 0 (and ``last_user_id`` ``None``) when no user
        after ``after_id`` is without an organization.

    Raises:
        DatabaseError: the batch failed (e.g. a concurrent onboarding took a slug); it
            was rolled back, nothing of it was written.
    """
    params = {"public": list(PUBLIC_MAIL_DOMAINS), "after": after_id, "limit": batch_size}
    with cross_tenant(reason="backfill_organizations"), connection.cursor() as cursor:
        # Transaction-local planner settings. jit off: big row estimates would make
        # PostgreSQL JIT-compile this short statement (~0.1s, more than it saves).
        # enable_seqscan off: the deferred foreign-key checks of the inserted and updated
        # rows (one per row and key, at COMMIT) run plans that the session caches at first
        # use; one made while tenancy_organization was small is a sequential scan, and it
        # stays cached while the table grows with every batch (seen: each batch slower
        # than the last). Every read of _BATCH_SQL has an index, at any table size.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('goldleaves.backfill_organizations')), "
            "set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true)"
        )
        cursor.execute(_BOUNDS_SQL, params)
        (last_id,) = cursor.fetchone()
        if last_id is None:
            return BackfillBatchResult()
        cursor.execute(_BATCH_SQL, {**params, "last": last_id})
        users, via_membership, organizations, memberships, _ = cursor.fetchone()
    return BackfillBatchResult(
        users=users,
        organizations_created=organizations,
        memberships_created=memberships,
        via_existing_membership=via_membership,
        last_user_id=last_id,
    )


def organizations_backfill(
    *,
    batch_size: int = 5000,
    max_batches: int | None = None,
    dry_run: bool = False,
    on_batch: Callable[[BackfillTotals], None] | None = None,
    sample: list | None = None,
    sample_size: int = 10,
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
        sample: in a dry run, a list that receives up to ``sample_size``
            ``PlannedOrganization``s (by slug) it would create, read before the rollback
            (the organizations its own transaction inserted: ``created_at = now()``, the
            transaction's start; PostgreSQL manual, 9.9.5 "Current Date/Time").
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
                if sample is not None and totals.organizations_created:
                    sample.extend(_planned_organizations(sample_size))
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


def _planned_organizations(limit: int) -> list[PlannedOrganization]:
    """The organizations this transaction's batches inserted (a dry run's, before its
    rollback), up to ``limit``, by slug."""
    with cross_tenant(reason="backfill_organizations: dry-run sample"), connection.cursor() as c:
        c.execute(_PLANNED_SQL, {"limit": limit})
        return [PlannedOrganization(*row) for row in c.fetchall()]
