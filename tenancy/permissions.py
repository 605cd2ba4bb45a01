"""Access rules for organizations named in a URL (not the request's own organization).

A few endpoints take an organization id in their path (``/billing/usage-summary/<id>/``).
The rule for them lives here, once: the caller must be a member of THAT organization, or
staff. Anyone else gets a 404, never a 403, exactly as for a missing organization, so an
id cannot be probed for existence (the same no-enumeration rule as tenant rows).
"""

import uuid

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from tenancy.models import Organization
from tenancy.selectors import membership_for


def readable_organization(*, user, organization_id: uuid.UUID) -> Organization:
    """The ``Organization`` whose id is ``organization_id`` if ``user`` may read it: an
    active member of it, or staff (``user.is_staff``: any organization).

    Organizations are the tenants, not tenant rows, so the lookup needs no tenant context;
    the membership is the user's own, which row-level security admits in any organization
    (``app.current_user``).

    Raises:
        rest_framework.exceptions.NotFound: 404 when no organization has that id AND when
            the user may not read it (indistinguishable on purpose).
    """
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        raise exceptions.NotFound
    if user.is_staff or membership_for(user=user, organization_id=organization.pk) is not None:
        return organization
    raise exceptions.NotFound


class IsMemberOfTargetOrganization(BasePermission):
    """DRF permission for a view whose URL names an organization: ``readable_organization``
    for the URL keyword argument ``view.target_organization_kwarg`` (default
    ``"organization_id"``, a UUID path converter).

    On success stores the organization on the view as ``view.target_organization`` and
    admits the request; otherwise raises ``NotFound`` (404). Put it after
    ``IsAuthenticated`` in ``permission_classes``, so an anonymous request stays a 401.
    """

    def has_permission(self, request, view) -> bool:
        kwarg = getattr(view, "target_organization_kwarg", "organization_id")
        view.target_organization = readable_organization(
            user=request.user, organization_id=view.kwargs[kwarg]
        )
        return True
