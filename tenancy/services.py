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
    #: Lines for the operator from the ``organization_onboarded`` receivers (e.g. "Stripe is
    #: off"); empty when nothing was created.
    notes: tuple[str, ...] = ()

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
    All in one transaction, which also sends ``tenancy.signals.organization_onboarded``
    for a new organization (billing defers its Stripe customer and subscription job there,
    so the job commits with the organization and never runs for a rolled-back one; Stripe
    itself is called by the job, never here). Two onboardings of the same new slug at
    once: the slug's unique index makes the later INSERT wait for the earlier transaction
    and fail once it commits; that one is then judged like an existing organization
    (unchanged for the same owner, ``OnboardingError`` for another), never an ``IntegrityError``.

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
        from tenancy.signals import organization_onboarded

        responses = organization_onboarded.send(
            sender=Organization, organization=organization, plan_tier=plan_tier
        )
    notes = tuple(answer for _receiver, answer in responses if isinstance(answer, str))
    return OnboardResult(organization, owner, True, owner_created, True, notes)


def organization_onboard_problems(*, name: str, owner_email: str, plan_tier: str) -> list[str]:
    """Every reason ``organization_onboard`` would refuse these arguments (list of str,
    empty: it would not), found without writing anything: a name without letters or
    digits, a missing or invalid email, a name or email longer than its column
    (``Organization.name``, ``User.email``) or holding a NUL character (PostgreSQL text
    cannot), an unknown plan, and a slug that already exists with a different owner. Lets
    a command report every problem of every row at once."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    problems = []
    name, owner_email = (name or "").strip(), (owner_email or "").strip()
    slug = organization_slug(name)
    if not name:
        problems.append("name is required")
    elif not slug:
        problems.append(f"invalid organization name {name!r}: it needs letters or digits")
    if not owner_email:
        problems.append("owner_email is required")
    else:
        try:
            validate_email(owner_email)
        except ValidationError:
            problems.append(f"invalid owner email {owner_email!r}")
    for what, value, field in (
        ("name", name, Organization._meta.get_field("name")),
        ("owner email", owner_email, User._meta.get_field("email")),
    ):
        if len(value) > field.max_length:
            problems.append(f"{what} is {len(value)} characters long, over {field.max_length}")
        if "\x00" in value:
            problems.append(f"{what} contains a NUL character")
    if plan_tier not in PlanTier.values:
        problems.append(f"unknown plan {plan_tier!r} (one of {', '.join(PlanTier.values)})")
    if slug and owner_email and "\x00" not in owner_email:  # a NUL cannot even be queried
        organization = Organization.objects.filter(slug=slug).first()
        if organization is not None:
            try:
                _onboarded_already(organization, owner_email=owner_email)
            except OnboardingError as exc:
                problems.append(str(exc))
    return problems
