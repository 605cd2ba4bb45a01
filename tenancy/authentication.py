"""DRF authentication that reuses the tenant middleware's JWT result.

``TenantMiddleware`` must authenticate the bearer token before the view (DRF
authenticates lazily, inside the view, too late to choose the tenant). It
stores ``(user, validated_token)`` on the request; this class hands that pair
to DRF so the token is decoded once per request.
"""

from rest_framework_simplejwt.authentication import JWTAuthentication

JWT_RESULT_ATTR = "_goldleaves_jwt"


class TenantJWTAuthentication(JWTAuthentication):
    """simplejwt's ``JWTAuthentication``, short-circuited by the middleware's result."""

    def authenticate(self, request):
        """``(user, validated_token)`` stored by ``TenantMiddleware`` for this request, else
        simplejwt's own authentication (``None`` without a bearer header; raises
        ``AuthenticationFailed``/``InvalidToken`` for a bad token)."""
        cached = getattr(request._request, JWT_RESULT_ATTR, None)
        if cached is not None:
            return cached
        return super().authenticate(request)
