"""OpenAPI: declare the bearer-JWT scheme for ``TenantJWTAuthentication`` and the token pair
serializer's shape."""

from drf_spectacular.contrib.rest_framework_simplejwt import (
    SimpleJWTScheme,
    TokenObtainPairSerializerExtension,
)


class TenantJWTScheme(SimpleJWTScheme):
    """drf-spectacular extension: documents ``TenantJWTAuthentication`` as simplejwt's
    scheme, i.e. OpenAPI ``securitySchemes.jwtAuth = {"type": "http", "scheme": "bearer",
    "bearerFormat": "JWT"}`` on every authenticated operation. Registered on import
    (``tenancy.apps.TenancyConfig.ready`` imports this module)."""

    target_class = "tenancy.authentication.TenantJWTAuthentication"
    name = "jwtAuth"


class OrganizationTokenObtainPairSerializerExtension(TokenObtainPairSerializerExtension):
    """drf-spectacular extension: documents ``OrganizationTokenObtainPairSerializer`` as
    simplejwt's pair serializer (request ``{"email", "password"}``, response ``{"access",
    "refresh"}``); drf-spectacular's own extension matches simplejwt's class exactly, not
    its subclasses."""

    target_class = "tenancy.serializers.OrganizationTokenObtainPairSerializer"
