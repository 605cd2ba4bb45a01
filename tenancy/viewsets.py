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
        """DRF's ``APIView.initial`` (format suffix, content negotiation, versioning,
        authentication) with the throttles checked BEFORE the permissions, then the
        organization check.

        DRF checks permissions first, so a request refused by a permission class would
        never be counted against the plan-tier rate limit (``tenancy.ratelimit``); here
        it is counted once, its 403 carries the RateLimit headers, and over the limit it
        is a 429. Once only: an object-level refusal later (``check_object_permissions``
        in ``get_object``) does not count the request again. Requests with no
        organization are not counted (``PlanRateThrottle``); an unauthenticated one is
        still a 401 from the permission check, before the organization check (403).
        Keep in step with ``rest_framework.views.APIView.initial`` when upgrading DRF.
        """
        self.format_kwarg = self.get_format_suffix(**kwargs)
        neg = self.perform_content_negotiation(request)
        request.accepted_renderer, request.accepted_media_type = neg
        version, scheme = self.determine_version(request, *args, **kwargs)
        request.version, request.versioning_scheme = version, scheme
        self.perform_authentication(request)
        self.check_throttles(request)
        self.check_permissions(request)
        if getattr(request._request, "organization", None) is None:
            raise exceptions.PermissionDenied(
                "Authenticate with a bearer token (JWT) for an organization.",
                code="organization_required",
            )

    @property
    def organization(self):
        return self.request._request.organization

    def finalize_response(self, request, response, *args, **kwargs):
        """Add the plan-tier RateLimit headers (``tenancy.ratelimit``) to every response."""
        response = super().finalize_response(request, response, *args, **kwargs)
        rate_limit = getattr(request._request, "rate_limit", None)
        if rate_limit is not None:
            for name, value in rate_limit.headers().items():
                response[name] = value
        return response


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
