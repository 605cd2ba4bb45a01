"""Auth and organization endpoints: tokens (obtain, refresh, logout), the active
organization and the caller's memberships."""

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import generics, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView, TokenViewBase

from tenancy.login_throttle import LoginRateThrottle, RefreshRateThrottle
from tenancy.models import Membership
from tenancy.permissions import MembersOnly, MembersReadOwnersWrite
from tenancy.selectors import memberships_for_user
from tenancy.serializers import (
    CurrentOrganizationSerializer,
    MembershipSerializer,
    OrganizationSettingsSerializer,
)
from tenancy.services import organization_update
from tenancy.tokens import LogoutSerializer, RotatingTokenRefreshSerializer
from tenancy.viewsets import TenantAPIMixin


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Token pair",
            value={"access": "eyJhbGciOiJIUzI1NiIs...", "refresh": "eyJhbGciOiJIUzI1NiIs..."},
            response_only=True,
        )
    ]
)
class _TokenPairSerializer(serializers.Serializer):
    """``{"access": str, "refresh": str}``: a JWT pair (the schema of the answers)."""

    access = serializers.CharField()
    refresh = serializers.CharField()


_ERROR = OpenApiResponse(description='JSON error ``{"detail": str, "code": str}``.')


@extend_schema(
    responses={200: _TokenPairSerializer, 400: _ERROR, 401: _ERROR, 429: _ERROR},
    description="Email and password -> an access and a refresh token. Limited per client "
    "address, per email and per (address, email) pair: 429 with Retry-After.",
)
class TokenObtainApi(TokenObtainPairView):
    """``POST /api/v1/auth/token/``: ``{"email", "password"}`` -> ``{"access", "refresh"}``
    (``OrganizationTokenObtainPairSerializer``), throttled by ``LoginRateThrottle``."""

    throttle_classes = [LoginRateThrottle]


@extend_schema(
    request=RotatingTokenRefreshSerializer,
    responses={200: _TokenPairSerializer, 400: _ERROR, 401: _ERROR, 429: _ERROR},
    description="A refresh token -> a new access token and a new refresh token; the one "
    "sent is blacklisted (single use). Limited per client address: 429 with Retry-After.",
)
class TokenRefreshApi(TokenRefreshView):
    """``POST /api/v1/auth/token/refresh/``: ``{"refresh"}`` -> ``{"access", "refresh"}``
    (``tenancy.tokens.RotatingTokenRefreshSerializer``), throttled per address."""

    serializer_class = RotatingTokenRefreshSerializer
    throttle_classes = [RefreshRateThrottle]


class LogoutApi(TokenViewBase):
    """``POST /api/v1/auth/logout/``: ``{"refresh"}`` -> 204; that refresh token is
    blacklisted (``tenancy.tokens.LogoutSerializer``). Needs no access token (holding the
    refresh token is the proof); an invalid, expired or already blacklisted one is 401
    ``token_not_valid``, a missing one 400. Access tokens already issued stay valid until
    they expire (at most ``JWT_ACCESS_LIFETIME_MINUTES``)."""

    serializer_class = LogoutSerializer

    @extend_schema(
        request=LogoutSerializer,
        responses={204: None, 400: _ERROR, 401: _ERROR},
        description="Blacklist the refresh token sent (logout).",
    )
    def post(self, request, *args, **kwargs):
        self.get_serializer(data=request.data).is_valid(raise_exception=True)
        return Response(status=204)


class CurrentOrganizationApi(TenantAPIMixin, APIView):
    """``GET /api/v1/organizations/current/``: the active organization and the caller's
    role (any member). ``PATCH``: change its settings (``OrganizationSettingsSerializer``;
    the owner only, else 403 ``role_forbidden``)."""

    permission_classes = [IsAuthenticated, MembersReadOwnersWrite]

    def _current(self):
        data = CurrentOrganizationSerializer(self.organization).data
        data["role"] = self.membership.role
        return Response(data)

    @extend_schema(responses=CurrentOrganizationSerializer)
    def get(self, request):
        return self._current()

    @extend_schema(
        request=OrganizationSettingsSerializer,
        responses={200: CurrentOrganizationSerializer, 400: _ERROR, 403: _ERROR},
    )
    def patch(self, request):
        serializer = OrganizationSettingsSerializer(
            self.organization, data=request.data, partial=True
        )
        serializer.is_valid(raise_exception=True)
        organization_update(
            organization=self.organization, acting_user=request.user, **serializer.validated_data
        )
        return self._current()


class MembershipListApi(TenantAPIMixin, generics.ListAPIView):
    """``GET /api/v1/organizations/``: the caller's memberships (one per organization)."""

    model = Membership
    permission_classes = [IsAuthenticated, MembersOnly]
    serializer_class = MembershipSerializer
    filter_backends: list = []

    def dangerously_get_queryset(self):
        """The caller's memberships in every organization (``memberships_for_user``):
        cross-organization on purpose, the list spans every organization the caller
        belongs to, not only the request's. Row-level security admits these rows through
        the user's own ``app.current_user`` (``tenancy.rls``)."""
        return memberships_for_user(user=self.request.user)
