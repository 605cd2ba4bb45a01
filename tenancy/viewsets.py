"""The API base classes: the only way views get tenant-owned querysets.

Every tenant-owned endpoint subclasses ``TenantModelViewSet`` (or uses
``TenantAPIMixin``): the queryset is filtered by ``request.organization``, so an
object of another organization is a 404 for every method, never a 403.
"""

from rest_framework import exceptions, serializers, viewsets

from tenancy.models import TenantQuerySet


class TenantAPIMixin:
    """Requires an authenticated request with an active organization (set by
    ``TenantMiddleware``); session-authenticated requests without one get 403."""

    def initial(self, request, *args, **kwargs):
        """DRF's ``APIView.initial`` (authentication, permissions), then the organization
        check. Plan-tier rate limits are counted before any view runs, by
        ``billing.ratelimit.RateLimitMiddleware``; an unauthenticated request is still a
        401 from the permission check, before the organization check (403)."""
        super().initial(request, *args, **kwargs)
        if getattr(request._request, "organization", None) is None:
            raise exceptions.PermissionDenied(
                "Authenticate with a bearer token (JWT) for an organization.",
                code="organization_required",
            )

    @property
    def organization(self):
        return self.request._request.organization


class TenantModelViewSet(TenantAPIMixin, viewsets.ModelViewSet):
    """A ``ModelViewSet`` over ``tenant_queryset()``, always scoped to the organization.

    Subclasses implement ``tenant_queryset(organization) -> TenantQuerySet``
    (usually a selector) and route writes to services in ``perform_create`` /
    ``perform_update`` / ``perform_destroy``.
    """

    #: the tenant model, for schema generation (no organization then)
    model = None

    def tenant_queryset(self, organization) -> TenantQuerySet:
        raise NotImplementedError

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular introspection
            return self.model.objects.none()
        queryset = self.tenant_queryset(self.organization)
        # Belt and braces: whatever the selector did, only this organization's rows.
        return queryset.filter(organization_id=self.organization.pk)


class TenantPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """A related-object field that only accepts ids from the request's organization.

    An id of another organization's object is "does not exist" (400), never a
    cross-tenant link and never a hint that the object exists.
    """

    def get_queryset(self):
        queryset = super().get_queryset()
        request = self.context.get("request")
        organization = getattr(getattr(request, "_request", request), "organization", None)
        if organization is None:
            return queryset.none()
        return queryset.filter(organization_id=organization.pk)
