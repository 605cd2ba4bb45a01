"""OpenAPI: declare the bearer-JWT scheme for ``TenantJWTAuthentication``."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class TenantJWTScheme(SimpleJWTScheme):
    """drf-spectacular extension: documents ``TenantJWTAuthentication`` as simplejwt's
    scheme, i.e. OpenAPI ``securitySchemes.jwtAuth = {"type": "http", "scheme": "bearer",
    "bearerFormat": "JWT"}`` on every authenticated operation. Registered on import
    (``tenancy.apps.TenancyConfig.ready`` imports this module)."""

    target_class = "tenancy.authentication.TenantJWTAuthentication"
    name = "jwtAuth"
