"""OpenAPI: declare the bearer-JWT scheme for ``TenantJWTAuthentication``."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class TenantJWTScheme(SimpleJWTScheme):
    target_class = "tenancy.authentication.TenantJWTAuthentication"
    name = "jwtAuth"
