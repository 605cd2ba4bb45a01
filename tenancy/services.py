"""Writes for tenancy: onboarding organizations and their owners."""

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from tenancy.context import tenant_context
from tenancy.models import Membership, MembershipRole, Organization, PlanTier, User


@dataclass(frozen=True)
class OnboardResult:
    """What ``organization_onboard`` did: the rows, and whether it created them."""

    organization: Organization
    owner: User
    organization_created: bool
    owner_created: bool
    membership_created: bool

    @property
    def changed(self) -> bool:
        """True if any row was created."""
        return self.organization_created or self.owner_created or self.membership_created


class OnboardingError(ValueError):
    """Onboarding refused: empty name, bad email, unknown plan, or a slug that already
    belongs to another owner's organization. Raised before anything is written (or with
    the transaction rolled back), so nothing was written."""


@transaction.atomic
def organization_update(
    *, organization: Organization, acting_user: User, **changes
) -> Organization:
    """Change ``organization``'s settings: ``name`` (str, 1-200 characters) and/or
    ``billing_timezone`` (an IANA name), already validated
    (``OrganizationSettingsSerializer``). Only the given fields are written. Who may call it
    (the owner) is the API's rule (``tenancy.permissions.MembersReadOwnersWrite``);
    ``acting_user`` is who did it. Raises ``ValueError`` for any other field."""
    unknown = set(changes) - {"name", "billing_timezone"}
    if unknown:
        raise ValueError(f"not organization settings: {sorted(unknown)}")
    for field, value in changes.items():
        setattr(organization, field, value)
    if changes:
        organization.save(update_fields=sorted(changes))
    return organization


def organization_slug(name: str) -> str:
    """The slug ``organization_onboard`` gives an organization named ``name``:
    ``slugify(name)`` cut to 100 characters (``Organization.slug``'s length); ``''`` if the
    name has no letters or digits. "Smith & Jones" and "Smith Jones" share ``smith-jones``."""
    return slugify((name or "").strip())[:100]


def _onboarded_already(organization: Organization, *, owner_email: str) -> OnboardResult:
    """Onboarding ``owner_email`` onto the existing ``organization``: nothing changed if
    they have an OWNER membership of it; ``OnboardingError`` if not."""
    with tenant_context(organization):
        membership = (
            Membership.objects.select_related("user")
            .filter(
                organization=organization,
                role=MembershipRole.OWNER,
                user__email__iexact=owner_email,
            )
            .first()
        )
    if membership is None:
        raise OnboardingError(
            f"organization slug {organization.slug!r} already exists with a different owner "
            f"({owner_email} is not an owner of {organization.name!r})"
        )
    return OnboardResult(organization, membership.user, False, False, False)


def organization_onboard(
    *,
    name: str,
    owner_email: str,
    plan_tier: str = PlanTier.STARTER,
    password: str | None = None,
) -> OnboardResult:
    """Create an organization (slug from ``name``), its owner user and owner membership.

    Idempotent on the slug, in the safe sense: if an organization with that slug exists
    and ``owner_email`` already has an OWNER membership of it, nothing is written and the
    result reports nothing changed (its name and plan are left as they are). If it exists
    and ``owner_email`` is not one of its owners, onboarding is refused: two firms whose
    names share a slug ("Smith & Jones", "Smith Jones") must never share an owner's
    access. For a new organization the owner user is created if missing (or reused,
    matched case-insensitively) and gets the organization as default if they had none.
    All in one transaction. Two onboardings of the same new slug at once: the slug's
    unique index makes the later INSERT wait for the earlier transaction and fail once it
    commits; that one is then judged like an existing organization (unchanged for the
    same owner, ``OnboardingError`` for another), never an ``IntegrityError``.

    Args:
        name: the firm's display name; its slug (``organization_slug(name)``) must be
            non-empty.
        owner_email: the owner's login (matched case-insensitively).
        plan_tier: one of ``PlanTier`` (``starter``, ``pro``, ``enterprise``).
        password: the owner's password if the user is created; unusable if ``None``.
    Returns:
        ``OnboardResult``: the organization, the owner and what was created.
    Raises:
        OnboardingError: empty name/slug, invalid email, unknown plan tier, or the slug
            already exists with a different owner; in every case nothing was written.
    """
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    name = (name or "").strip()
    slug = organization_slug(name)
    if not name or not slug:
        raise OnboardingError(f"invalid organization name {name!r}: it needs letters or digits")
    owner_email = (owner_email or "").strip()
    try:
        validate_email(owner_email)
    except ValidationError:
        raise OnboardingError(f"invalid owner email {owner_email!r}") from None
    if plan_tier not in PlanTier.values:
        raise OnboardingError(
            f"unknown plan {plan_tier!r}: choose one of {', '.join(PlanTier.values)}"
        )

    with transaction.atomic():
        # Lock the slug's row (if any) while its owners are checked.
        organization = Organization.objects.select_for_update().filter(slug=slug).first()
        if organization is not None:
            return _onboarded_already(organization, owner_email=owner_email)
        try:
            with transaction.atomic():  # a savepoint: the unique violation must not abort all
                organization = Organization.objects.create(
                    slug=slug, name=name, plan_tier=plan_tier
                )
        except IntegrityError:
            # The lock above locked nothing (there was no row yet): another onboarding of
            # this slug inserted it since. Our INSERT waited on the unique index until that
            # transaction committed, then failed (PostgreSQL manual, "Index Uniqueness
            # Checks": the would-be inserter waits for an uncommitted conflicting row); its
            # rows are visible to our next statement (READ COMMITTED), so it is judged as
            # any existing organization. No such row: another constraint failed; re-raised.
            organization = Organization.objects.select_for_update().filter(slug=slug).first()
            if organization is None:
                raise
            return _onboarded_already(organization, owner_email=owner_email)
        owner = User.objects.filter(email__iexact=owner_email).first()
        owner_created = owner is None
        if owner_created:
            owner = User.objects.create_user(
                email=owner_email, password=password, organization=organization
            )
        elif owner.organization_id is None:
            owner.organization = organization
            owner.save(update_fields=["organization"])
        with tenant_context(organization):
            Membership.objects.create(
                organization=organization, user=owner, role=MembershipRole.OWNER
            )
    return OnboardResult(organization, owner, True, owner_created, True)


# --- Backfill: give every user without an organization a default one ---------------------

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


@dataclass
class BackfillBatchResult:
    """One batch of ``organizations_backfill_batch``: counts, and the last user id seen
    (the next batch starts after it; ``None``: there was nothing left)."""

    users: int = 0
    organizations_created: int = 0
    memberships_created: int = 0
    via_existing_membership: int = 0
    last_user_id: int | None = None


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
    from django.db import connection

    from tenancy.context import cross_tenant

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
