"""Auth and organization endpoints: tokens (obtain, refresh, logout), the active
organization, the caller's memberships, and invitations (create, list, revoke, accept)."""

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView, TokenViewBase

from tenancy import invitations
from tenancy.login_throttle import (
    InvitationAcceptRateThrottle,
    LoginRateThrottle,
    RefreshRateThrottle,
)
from tenancy.models import Invitation, Membership, MembershipRole
from tenancy.permissions import AdminsOnly, MembersOnly, MembersReadOwnersWrite
from tenancy.selectors import memberships_for_user
from tenancy.serializers import (
    CurrentOrganizationSerializer,
    InvitationAcceptSerializer,
    InvitationSerializer,
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


class InvitationRefusedError(exceptions.APIException):
    """400 ``{"detail", "code"}`` of a refused invitation (``tenancy.invitations`` codes:
    ``invitation_invalid``, ``invitation_used``, ``invitation_expired``,
    ``invitation_revoked``, ``already_member``, ``password_mismatch``)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = invitations.INVALID


def _api_error(refused: invitations.InvitationRefused) -> exceptions.APIException:
    """The API exception of a service's refusal: 403 ``role_forbidden``, 400 ``invalid``
    with the field errors, or 400 with the refusal's code."""
    if refused.code == invitations.ROLE_FORBIDDEN:
        return exceptions.PermissionDenied(refused.detail, code=refused.code)
    if refused.errors:
        return exceptions.ValidationError(refused.errors)
    return InvitationRefusedError(refused.detail, code=refused.code)


@extend_schema(
    responses={200: InvitationSerializer, 201: InvitationSerializer, 400: _ERROR, 403: _ERROR}
)
class InvitationListCreateApi(TenantAPIMixin, generics.ListCreateAPIView):
    """``GET /api/v1/organizations/current/invitations/``: the organization's invitations,
    newest first (admins and owners). ``POST`` ``{"email", "role"}``: invite; the email
    with the single-use link goes out from a job (``tenancy.invitations``). 201 with the
    invitation (``status`` ``pending`` until the job sent it); 403 ``role_forbidden`` for
    an admin inviting an owner; 400 ``already_member`` or ``invalid``."""

    model = Invitation
    permission_classes = [IsAuthenticated, AdminsOnly]
    serializer_class = InvitationSerializer
    filter_backends: list = []

    def tenant_queryset(self, organization):
        return invitations.invitation_list(organization=organization)

    def perform_create(self, serializer):
        try:
            data = serializer.validated_data
            serializer.instance = invitations.invitation_create(
                organization=self.organization,
                acting_user=self.request.user,
                email=data["email"],
                role=data.get("role", MembershipRole.MEMBER),  # the model's default
            )
        except invitations.InvitationRefused as refused:
            raise _api_error(refused) from None


class InvitationRevokeApi(TenantAPIMixin, generics.DestroyAPIView):
    """``DELETE /api/v1/organizations/current/invitations/{id}/``: revoke an open
    invitation (admins and owners; an invitation as owner only by an owner): 204, also
    when it was revoked already; 400 ``invitation_used`` once accepted; 404 for an id of
    another organization."""

    model = Invitation
    permission_classes = [IsAuthenticated, AdminsOnly]
    serializer_class = InvitationSerializer

    def tenant_queryset(self, organization):
        return invitations.invitation_list(organization=organization)

    @extend_schema(responses={204: None, 400: _ERROR, 403: _ERROR, 404: _ERROR})
    def delete(self, request, *args, **kwargs):
        return super().delete(request, *args, **kwargs)

    def perform_destroy(self, instance):
        try:
            invitations.invitation_revoke(
                organization=self.organization, acting_user=self.request.user, invitation=instance
            )
        except invitations.InvitationRefused as refused:
            raise _api_error(refused) from None


class InvitationAcceptApi(APIView):
    """``POST /api/v1/auth/invitations/accept/``: ``{"token", "password"}`` -> 201
    ``{"email", "organization", "role"}``; then log in at ``auth/token/``. Needs no JWT
    (the token is the proof). 400 with a stable code for a token that is invalid, used,
    expired or revoked, ``invalid`` for a password a validator refuses; 429 when
    throttled (``InvitationAcceptRateThrottle``)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [InvitationAcceptRateThrottle]

    @extend_schema(
        request=InvitationAcceptSerializer,
        responses={201: InvitationAcceptSerializer, 400: _ERROR, 429: _ERROR},
        description="Accept an invitation: create (or link) the account and the membership.",
    )
    def post(self, request):
        serializer = InvitationAcceptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            membership = invitations.invitation_accept(**serializer.validated_data)
        except invitations.InvitationRefused as refused:
            raise _api_error(refused) from None
        body = {
            "email": membership.user.email,
            "organization": str(membership.organization_id),
            "role": membership.role,
        }
        return Response(body, status=status.HTTP_201_CREATED)
