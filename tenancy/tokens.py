"""JWT tokens: precise issue times, revocation, rotation with reuse refusal, logout.

Token lifecycle (simplejwt with its ``token_blacklist`` app):

* Every refresh token is recorded as an ``OutstandingToken`` (jti, user, expiry) when it
  is issued (login, rotation).
* ``POST auth/token/refresh/`` rotates: the presented refresh token is blacklisted and a
  new one issued (``ROTATE_REFRESH_TOKENS`` + ``BLACKLIST_AFTER_ROTATION``). A refresh
  token is usable exactly once; presenting it again is a 401.
* ``revoke_refresh_tokens(user_id=)`` blacklists every outstanding, unexpired refresh token of
  a user. The user model calls it on a password change and a deactivation, a signal on a
  user's deletion and on a membership's removal (``tenancy.signals``).
* ``User.tokens_valid_after`` (UTC) is set on a password change and a deactivation: an
  access or refresh token whose ``iat`` is earlier is refused
  (``issued_before_revocation``), by ``TenantJWTAuthentication`` and the refresh
  serializer alike, without waiting for the access token to expire.

``iat`` (RFC 7519, 4.1.6, a NumericDate: "non-integer values can be represented") carries
microseconds here, so that a token issued in the same second as, but before, a password
change is refused, while one issued just after it is accepted.
"""

from datetime import datetime

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt import tokens
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

REVOKED_CODE = "token_revoked"
REVOKED_DETAIL = "Token was issued before the user's password change or deactivation."


class _PreciseIssuedAt:
    """``iat`` in seconds since the epoch with microseconds (a float), not whole seconds."""

    def set_iat(self, claim: str = "iat", at_time: datetime | None = None) -> None:
        self.payload[claim] = round((at_time or self.current_time).timestamp(), 6)


class AccessToken(_PreciseIssuedAt, tokens.AccessToken):
    """simplejwt's access token with a microsecond ``iat`` (``AUTH_TOKEN_CLASSES``)."""


class RefreshToken(_PreciseIssuedAt, tokens.RefreshToken):
    """simplejwt's blacklistable refresh token with a microsecond ``iat``; the access
    tokens it mints are ``AccessToken``s (with their own ``iat``: the minting time)."""

    access_token_class = AccessToken


def issued_before_revocation(token, user) -> bool:
    """Whether ``token`` (a simplejwt token; ``iat`` in seconds since the epoch, int or
    float) was issued before ``user.tokens_valid_after`` (an aware UTC datetime or
    ``None``: nothing revoked). A token without ``iat`` counts as issued before."""
    valid_after = user.tokens_valid_after
    if valid_after is None:
        return False
    issued_at = token.get("iat")
    return issued_at is None or float(issued_at) < valid_after.timestamp()


def revoke_refresh_tokens(*, user_id: int) -> int:
    """Blacklist every outstanding, unexpired refresh token of the user ``user_id``;
    returns how many were newly blacklisted. Idempotent (the blacklist is unique per
    token). Runs in the caller's transaction."""
    pending = OutstandingToken.objects.filter(
        user_id=user_id, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    ).values_list("pk", flat=True)
    created = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token_id=pk) for pk in pending], ignore_conflicts=True
    )
    return len(created)


def refresh_tokens_purge_expired(*, now: datetime, batch_size: int = 5_000) -> int:
    """Delete the refresh tokens that expired at or before ``now`` (UTC), with their
    blacklist rows (``ON DELETE CASCADE``), ``batch_size`` rows per statement: what
    simplejwt's ``flushexpiredtokens`` command does in one unbounded DELETE. An expired
    token is refused by its ``exp`` claim whatever the tables hold, so this only reclaims
    space. Returns the number of tokens deleted."""
    deleted = 0
    while True:
        ids = list(
            OutstandingToken.objects.filter(expires_at__lte=now)
            .order_by("expires_at")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        OutstandingToken.objects.filter(id__in=ids).delete()
        deleted += len(ids)
        if len(ids) < batch_size:
            return deleted


class RotatingTokenRefreshSerializer(serializers.Serializer):
    """``{"refresh": str}`` -> ``{"access": str, "refresh": str}`` (the refresh token
    rotated when ``ROTATE_REFRESH_TOKENS``).

    Raises:
        InvalidToken: 401 ``token_not_valid``: not a valid, unexpired refresh token, or
            already blacklisted (logged out, or used once already: rotation makes each
            refresh token single-use, and of two concurrent uses only one wins).
        AuthenticationFailed: 401 ``no_active_account`` when the token's user was
            deleted or deactivated; 401 ``token_revoked`` when the token was issued
            before the user's ``tokens_valid_after``.
    """

    refresh = serializers.CharField()
    access = serializers.CharField(read_only=True)

    default_error_messages = {"no_active_account": "No active account found for the given token."}

    def validate(self, attrs: dict) -> dict:
        try:
            refresh = RefreshToken(attrs["refresh"])
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        user_id = refresh.get(api_settings.USER_ID_CLAIM)
        user_model = get_user_model()
        user = user_model.objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
        if user is None or not api_settings.USER_AUTHENTICATION_RULE(user):
            raise AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            )
        if issued_before_revocation(refresh, user):
            raise AuthenticationFailed(REVOKED_DETAIL, REVOKED_CODE)
        data = {"access": str(refresh.access_token)}
        if api_settings.ROTATE_REFRESH_TOKENS:
            if api_settings.BLACKLIST_AFTER_ROTATION:
                _, created = refresh.blacklist()
                if not created:  # a concurrent request rotated this token first
                    raise InvalidToken("Token is blacklisted")
            refresh.set_jti()
            refresh.set_exp()
            refresh.set_iat()
            refresh.outstand()
            data["refresh"] = str(refresh)
        return data


class LogoutSerializer(serializers.Serializer):
    """``{"refresh": str}``: blacklists that refresh token (logout).

    Raises:
        InvalidToken: 401 ``token_not_valid`` for a token that is invalid, expired or
            already blacklisted.
    """

    refresh = serializers.CharField(write_only=True)

    def validate(self, attrs: dict) -> dict:
        try:
            RefreshToken(attrs["refresh"]).blacklist()
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        return {}
