"""The API base classes: the only way views get tenant-owned querysets.

Every tenant endpoint subclasses ``TenantAPIMixin`` (with ``APIView`` or a DRF generic
view) or ``TenantModelViewSet``. A view that lists or retrieves rows implements
``tenant_queryset(organization)``; the mixin's ``get_queryset`` calls it with the
request's organization and filters the result by that organization again, so an object
of another organization is a 404 for every method, never a 403. A subclass that defines
``get_queryset`` (or a ``queryset`` attribute) itself is refused when the class is created
(``TypeError``). Views that are cross-organization on purpose (the caller's own
memberships, in every organization) implement ``dangerously_get_queryset()`` instead:
grep that name to audit them.
"""

from django.db import DataError, connection, transaction
from rest_framework import exceptions, serializers, viewsets

from tenancy.context import request_organization
from tenancy.models import TenantQuerySet
from tenancy.permissions import ROLE_FORBIDDEN, RolePermission


def _organization_required() -> exceptions.PermissionDenied:
    return exceptions.PermissionDenied(
        "Authenticate with a bearer token (JWT) for an organization.",
        code="organization_required",
    )


class TenantAPIMixin:
    """Base of every tenant API view: an authenticated request with an organization (set by
    ``TenantMiddleware``), with querysets scoped to the organization and the organization
    in the serializer context. Plan-tier rate limits are counted before any view runs
    (``tenancy.ratelimit.RateLimitMiddleware``), not here.

    Class attributes:
        model: the model ``get_queryset`` returns rows of; drf-spectacular's schema
            introspection (no request organization then) gets ``model.objects.none()``.
    Raises (at class creation):
        TypeError: a subclass defines ``get_queryset`` or a ``queryset`` attribute (both
            unscoped), or implements both ``tenant_queryset`` and
            ``dangerously_get_queryset``.
    """

    model = None
    _savepoint = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("get_queryset", "queryset"):
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__} defines {name}: a tenant view implements "
                    "tenant_queryset(organization), or, when it is cross-organization on "
                    "purpose, dangerously_get_queryset()."
                )
        if (
            cls.tenant_queryset is not TenantAPIMixin.tenant_queryset
            and cls.dangerously_get_queryset is not TenantAPIMixin.dangerously_get_queryset
        ):
            raise TypeError(
                f"{cls.__qualname__} implements both tenant_queryset() and "
                "dangerously_get_queryset(); a view is scoped or cross-organization, not both."
            )

    @property
    def organization(self):
        """The request's ``Organization`` (``tenancy.context.request_organization``);
        ``None`` only before ``check_permissions`` has refused a request without one, and
        during schema introspection."""
        return request_organization(self.request)

    @property
    def membership(self):
        """The caller's ``Membership`` of ``organization`` (set by ``TenantMiddleware``
        with it), or ``None`` when there is no organization."""
        return getattr(self.request, "membership", None)

    def initial(self, request, *args, **kwargs):
        """DRF's ``initial`` (authentication, permissions), after a savepoint in the
        request's transaction (``TenantMiddleware``'s; none outside a transaction): a
        ``DataError`` the database raises for bad input (an out-of-range date, a number
        too large) rolls back to it in ``handle_exception`` and answers 400, while the
        transaction stays usable for the request's billing event. One round trip; the
        savepoint is released with the transaction."""
        if connection.in_atomic_block:
            self._savepoint = transaction.savepoint()
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc):
        """Roll back to the view's savepoint on a ``DataError`` (the error handler,
        ``core.errors.api_exception_handler``, then answers 400 ``invalid_value``), then
        DRF's handling."""
        if isinstance(exc, DataError) and self._savepoint is not None:
            transaction.savepoint_rollback(self._savepoint)
            self._savepoint = None
        return super().handle_exception(exc)

    def check_permissions(self, request):
        """DRF's permission classes, then the organization: an unauthenticated request is
        a 401 from the permission classes, before the organization check.

        Every tenant view lists one ``tenancy.permissions.RolePermission`` (its row of the
        role matrix) in ``permission_classes``; a view without one refuses every request.

        Raises:
            rest_framework.exceptions.NotAuthenticated: 401, from ``IsAuthenticated``.
            rest_framework.exceptions.PermissionDenied: 403 ``role_forbidden`` from the
                role permission (or for a view with none), or from another permission
                class, or
                ``code: "organization_required"`` for a request without an organization
                (e.g. session-authenticated).
        """
        if not any(isinstance(p, RolePermission) for p in self.get_permissions()):
            # fail closed: an endpoint without a row in the role matrix admits nobody
            raise exceptions.PermissionDenied(
                f"{type(self).__qualname__} has no role rule (tenancy.permissions).",
                code=ROLE_FORBIDDEN,
            )
        super().check_permissions(request)
        if self.organization is None:
            raise _organization_required()

    def tenant_queryset(self, organization) -> TenantQuerySet:
        """The rows of ``organization`` (an ``Organization``) this view lists and retrieves,
        usually a selector's queryset. Implemented by subclasses that use ``get_queryset``.
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement tenant_queryset()")

    def dangerously_get_queryset(self):
        """The escape hatch: a queryset NOT scoped to the request's organization, for a view
        that is cross-organization on purpose (e.g. the caller's memberships in every
        organization). Implemented instead of ``tenant_queryset``; nothing filters its
        result, so it must scope the rows itself (e.g. to ``request.user``)."""
        raise NotImplementedError

    def get_queryset(self):
        """``tenant_queryset(organization)`` filtered again by ``organization_id`` (whatever
        the selector did, only this organization's rows), or ``dangerously_get_queryset()``
        when the subclass implements that; ``model.objects.none()`` for drf-spectacular."""
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular introspection
            return self.model.objects.none()
        if type(self).dangerously_get_queryset is not TenantAPIMixin.dangerously_get_queryset:
            return self.dangerously_get_queryset()
        organization = self.organization
        if organization is None:  # check_permissions refuses such requests first
            raise _organization_required()
        return self.tenant_queryset(organization).filter(organization_id=organization.pk)

    def get_serializer_context(self) -> dict:
        """DRF's serializer context (``request``, ``view``, ``format``) plus
        ``organization``: the request's ``Organization`` (``None`` during schema
        introspection). Serializers and their fields read the organization from here."""
        context = super().get_serializer_context()
        context["organization"] = self.organization
        return context


class TenantModelViewSet(TenantAPIMixin, viewsets.ModelViewSet):
    """A ``ModelViewSet`` over ``tenant_queryset()``, always scoped to the organization.

    Subclasses set ``model``, implement ``tenant_queryset(organization) ->
    TenantQuerySet`` (usually a selector) and route writes to services in
    ``perform_create`` / ``perform_update`` / ``perform_destroy``.
    """


class TenantPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """A related-object field that only accepts ids from the serializer context's
    ``organization`` (``TenantAPIMixin.get_serializer_context`` puts the request's there).

    An id of another organization's object is "does not exist" (400), never a
    cross-tenant link and never a hint that the object exists; without an organization
    in the context no id is accepted.
    """

    def get_queryset(self):
        queryset = super().get_queryset()
        organization = self.context.get("organization")
        if organization is None:
            return queryset.none()
        return queryset.filter(organization_id=organization.pk)
