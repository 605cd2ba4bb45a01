"""Access rules of the API: roles, and organizations named in a URL.

Roles: every tenant endpoint names, per HTTP method, the least role that may call it
(``owner`` > ``admin`` > ``member``), with one of the ``RolePermission`` classes below;
the README's role matrix is these classes written out, and
``tenancy/tests/test_role_matrix.py`` walks every endpoint, method and role. A refusal
is 403 ``{"detail", "code": "role_forbidden"}``. Staff users (``is_staff``) pass every
role check (they are the operators; the admin is their tool anyway). ``HEAD`` is judged
as ``GET``; ``OPTIONS`` (DRF's metadata) needs ``member``.

Organizations in a URL: a few endpoints take an organization id in their path
(``/billing/usage-summary/<id>/``). The caller must be a member of THAT organization, or
staff. Anyone else gets a 404, never a 403, exactly as for a missing organization, so an
id cannot be probed for existence (the same no-enumeration rule as tenant rows). The
role checked there is the caller's role in that organization.
"""

import uuid

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from tenancy.models import Membership, MembershipRole, Organization
from tenancy.selectors import membership_for

OWNER, ADMIN, MEMBER = MembershipRole.OWNER, MembershipRole.ADMIN, MembershipRole.MEMBER
#: a role's rank: a role may do everything a lower one may
ROLE_RANK = {MEMBER: 1, ADMIN: 2, OWNER: 3}
ROLE_FORBIDDEN = "role_forbidden"


class RolePermission(BasePermission):
    """DRF permission: the caller's role must rank at least ``minimum_roles[method]``.

    Subclasses set ``minimum_roles``: ``{"GET": "member", "DELETE": "admin", ...}``; a
    method missing from it is refused for every role (fail closed). The role is the
    caller's ``Membership.role`` in the request's organization (``request.membership``,
    set by ``TenantMiddleware``), or in the organization named by the URL when the view
    uses ``IsMemberOfTargetOrganization`` (listed before this class).

    Refuses with 403 ``role_forbidden`` (``code`` and ``message`` are read by DRF's
    ``permission_denied``).
    """

    minimum_roles: dict[str, str] = {}
    code = ROLE_FORBIDDEN

    @classmethod
    def required_role(cls, method: str) -> str | None:
        """The least role for ``method`` (``HEAD`` as ``GET``, ``OPTIONS``: member), or
        ``None``: nobody."""
        if method == "OPTIONS":
            return MEMBER
        return cls.minimum_roles.get("GET" if method == "HEAD" else method)

    def has_permission(self, request, view) -> bool:
        if request.user.is_staff:
            return True
        if hasattr(view, "target_organization"):
            membership = getattr(view, "target_membership", None)
        else:
            membership = getattr(request, "membership", None)
        required = self.required_role(request.method)
        if membership is None:
            self.message = "Authenticate with a bearer token (JWT) for an organization."
            self.code = "organization_required"
            return False
        if required is not None and ROLE_RANK[membership.role] >= ROLE_RANK[required]:
            return True
        if required is None:
            self.message = f"No role may use {request.method} here."
        else:
            self.message = (
                f"{request.method} here needs the {required} role or a higher one; "
                f"yours is {membership.role}."
            )
        return False


def _every_method(role: str) -> dict[str, str]:
    return {method: role for method in ("GET", "POST", "PUT", "PATCH", "DELETE")}


class MembersWriteAdminsDelete(RolePermission):
    """Clients, cases, documents: members read, create and change; admins and owners
    also delete."""

    minimum_roles = {**_every_method(MEMBER), "DELETE": ADMIN}


class AdminsOnly(RolePermission):
    """Billing (events, usage summary and report, pipeline health, usage reporting) and
    invitations: admins and owners only (who may invite an owner is the service's rule,
    ``tenancy.invitations``)."""

    minimum_roles = _every_method(ADMIN)


class MembersReadOwnersWrite(RolePermission):
    """Organization settings: members read; only owners change them."""

    minimum_roles = {"GET": MEMBER, "PUT": OWNER, "PATCH": OWNER}


class OwnersOnly(RolePermission):
    """The subscription (plan changes): owners only, like the organization's settings."""

    minimum_roles = _every_method(OWNER)


class MembersOnly(RolePermission):
    """Every member (the caller's own memberships)."""

    minimum_roles = _every_method(MEMBER)


def _target_access(*, user, organization_id: uuid.UUID) -> tuple[Organization, Membership | None]:
    """``(organization, the user's membership of it or None for staff)``; ``NotFound``
    as ``readable_organization``."""
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        raise exceptions.NotFound
    if user.is_staff:
        return organization, None
    membership = membership_for(user=user, organization_id=organization.pk)
    if membership is None:
        raise exceptions.NotFound
    return organization, membership


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
    return _target_access(user=user, organization_id=organization_id)[0]


class IsMemberOfTargetOrganization(BasePermission):
    """DRF permission for a view whose URL names an organization: ``readable_organization``
    for the URL keyword argument ``view.target_organization_kwarg`` (default
    ``"organization_id"``, a UUID path converter).

    On success stores the organization on the view as ``view.target_organization``, the
    caller's membership of it as ``view.target_membership`` (``None`` for staff; the role
    ``RolePermission`` checks), and admits the request; otherwise raises ``NotFound``
    (404). Put it after ``IsAuthenticated`` in ``permission_classes``, so an anonymous
    request stays a 401, and before the ``RolePermission``.
    """

    def has_permission(self, request, view) -> bool:
        kwarg = getattr(view, "target_organization_kwarg", "organization_id")
        view.target_organization, view.target_membership = _target_access(
            user=request.user, organization_id=view.kwargs[kwarg]
        )
        return True
