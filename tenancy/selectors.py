"""Reads for tenancy: organizations and memberships."""

import uuid

from django.db.models import QuerySet

from tenancy.models import Membership, Organization


def membership_for(*, user, organization_id: uuid.UUID) -> Membership | None:
    """The active ``user``'s membership in organization ``organization_id`` (with the
    organization loaded), or ``None`` if there is none or the user is inactive."""
    if not user.is_active:
        return None
    return (
        Membership.objects.select_related("organization")
        .filter(user=user, organization_id=organization_id)
        .first()
    )


def memberships_for_user(*, user) -> QuerySet[Membership]:
    """All of ``user``'s memberships with their organizations, by organization name."""
    return (
        Membership.objects.select_related("organization")
        .filter(user=user)
        .order_by("organization__name")
    )


def organization_by_slug(*, slug: str) -> Organization | None:
    """The organization whose ``slug`` is exactly ``slug`` (case-sensitive), or ``None``.
    Organizations are not tenant rows, so this reads without a tenant context."""
    return Organization.objects.filter(slug=slug).first()


def organization_by_id(*, organization_id: uuid.UUID) -> Organization | None:
    """The organization with primary key ``organization_id``, or ``None``. Organizations
    are not tenant rows, so this reads without a tenant context."""
    return Organization.objects.filter(pk=organization_id).first()
