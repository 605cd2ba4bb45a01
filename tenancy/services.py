"""Writes for tenancy: onboarding organizations and their owners."""

from dataclasses import dataclass

from django.db import transaction
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
        return self.organization_created or self.owner_created or self.membership_created


class OnboardingError(ValueError):
    """Bad onboarding input (empty name, bad email, unknown plan); nothing was written."""


def organization_onboard(
    *,
    name: str,
    owner_email: str,
    plan_tier: str = PlanTier.STARTER,
    password: str | None = None,
) -> OnboardResult:
    """Create an organization (slug from ``name``), its owner user and owner membership.

    Idempotent on the slug: if the organization exists, nothing about it changes;
    a missing owner user or membership is added. The owner's default
    organization is set if they had none. All in one transaction.

    Args:
        name: the firm's display name; its slug (``slugify(name)``) must be non-empty.
        owner_email: the owner's login (matched case-insensitively).
        plan_tier: one of ``PlanTier`` (``starter``, ``pro``, ``enterprise``).
        password: the owner's password if the user is created; unusable if ``None``.
    Raises:
        OnboardingError: empty name/slug, invalid email, or unknown plan tier.
    """
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    name = (name or "").strip()
    slug = slugify(name)[:100]
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
        organization, org_created = Organization.objects.get_or_create(
            slug=slug, defaults={"name": name, "plan_tier": plan_tier}
        )
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
            _, membership_created = Membership.objects.get_or_create(
                organization=organization,
                user=owner,
                defaults={"role": MembershipRole.OWNER},
            )
    return OnboardResult(organization, owner, org_created, owner_created, membership_created)
