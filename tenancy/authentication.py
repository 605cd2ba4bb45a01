"""DRF authentication that reuses the tenant middleware's JWT result.

``TenantMiddleware`` must authenticate the bearer token before the view (DRF
authenticates lazily, inside the view, too late to choose the tenant). It
stores ``(user, validated_token)`` on the request; this class hands that pair
to DRF so the token is decoded once per request.

Both use this class, so both refuse a token issued before the user's
``tokens_valid_after`` (a password change or deactivation, ``tenancy.tokens``), checked
on the user row simplejwt loads anyway: no query of its own.
"""

from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication

from tenancy.tokens import REVOKED_CODE, REVOKED_DETAIL, issued_before_revocation

JWT_RESULT_ATTR = "_goldleaves_jwt"


class TenantJWTAuthentication(JWTAuthentication):
    """simplejwt's ``JWTAuthentication``, short-circuited by the middleware's result, that
    also refuses revoked tokens."""

    def authenticate(self, request):
        """``(user, validated_token)`` stored by ``TenantMiddleware`` for this request, else
        simplejwt's own authentication (``None`` without a bearer header; raises
        ``AuthenticationFailed``/``InvalidToken`` for a bad token). ``request`` is a DRF
        ``Request`` or, from the middleware, a Django ``HttpRequest``."""
        cached = getattr(getattr(request, "_request", request), JWT_RESULT_ATTR, None)
        if cached is not None:
            return cached
        return super().authenticate(request)

    def get_user(self, validated_token):
        """simplejwt's user lookup (one query; 401 ``user_not_found``, ``user_inactive``),
        then the revocation check.

        Raises:
            AuthenticationFailed: 401 ``token_revoked`` when the token's ``iat`` is before
                the user's ``tokens_valid_after``.
        """
        user = super().get_user(validated_token)
        if issued_before_revocation(validated_token, user):
            raise AuthenticationFailed(REVOKED_DETAIL, code=REVOKED_CODE)
        return user
