"""Serializers for tokens, organizations and memberships."""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers
from rest_framework_simplejwt.serializers import PasswordField, TokenObtainPairSerializer

from core.serializers import StrictCharField, StrictModelSerializer
from tenancy.context import user_context
from tenancy.models import Invitation, Membership, Organization
from tenancy.tokens import RefreshToken


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Log in",
            value={"email": "owner@demo-law.test", "password": "a-long-passphrase"},
            request_only=True,
        ),
        OpenApiExample(
            "Token pair",
            value={"access": "eyJhbGciOiJIUzI1NiIs...", "refresh": "eyJhbGciOiJIUzI1NiIs..."},
            response_only=True,
        ),
    ]
)
class OrganizationTokenObtainPairSerializer(TokenObtainPairSerializer):
    """simplejwt's email/password pair serializer; the access and refresh tokens carry
    ``org``: the user's default organization id (or one of their memberships' if unset).
    The refresh token is recorded as outstanding (blacklistable, ``tenancy.tokens``)."""

    token_class = RefreshToken

    def __init__(self, *args, **kwargs):
        """simplejwt's fields with a maximum length: the email 254 characters (RFC 5321's
        path limit), the password 4096 (the API's text limits; a 400 beyond). Neither is
        trimmed: a password is compared as typed (Django's own login form does not strip
        it either), and an email with spaces is simply not a user's (401)."""
        super().__init__(*args, **kwargs)
        self.fields[self.username_field] = StrictCharField(
            write_only=True, max_length=254, trim_whitespace=False
        )
        self.fields["password"] = PasswordField(max_length=4096, trim_whitespace=False)

    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        org_id = user.organization_id
        if org_id is None:
            with user_context(user):  # RLS admits the user's own memberships only
                org_id = (
                    Membership.objects.filter(user=user)
                    .order_by("created_at")
                    .values_list("organization_id", flat=True)
                    .first()
                )
        token["org"] = str(org_id) if org_id else None
        return token


class OrganizationSerializer(serializers.ModelSerializer):
    """An organization as JSON, read-only: ``{"id": uuid, "name": str, "slug": str,
    "plan_tier": "starter"|"pro"|"enterprise", "subscription_status": Stripe's status of
    its subscription ("active", "past_due", "unpaid", "canceled", ...; "" without one),
    "billing_timezone": IANA name, "created_at": ISO 8601 UTC}``. Never exposes the Stripe
    ids. ``plan_tier`` and ``subscription_status`` follow Stripe (webhooks), never a client."""

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "plan_tier",
            "subscription_status",
            "billing_timezone",
            "created_at",
        ]
        read_only_fields = fields


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Active organization",
            value={
                "id": "0b5d1f2e-8c3a-4f7e-9a41-6d2c8e7b9f10",
                "name": "Demo Law LLP",
                "slug": "demo-law",
                "plan_tier": "pro",
                "subscription_status": "active",
                "billing_timezone": "America/New_York",
                "created_at": "2026-01-05T14:30:00Z",
                "role": "owner",
            },
            response_only=True,
        )
    ]
)
class CurrentOrganizationSerializer(OrganizationSerializer):
    """The active organization plus the caller's ``role`` in it."""

    role = serializers.CharField(read_only=True)

    class Meta(OrganizationSerializer.Meta):
        fields = OrganizationSerializer.Meta.fields + ["role"]
        read_only_fields = fields


class OrganizationSettingsSerializer(StrictModelSerializer):
    """The settings an owner may change, all optional (PATCH): ``{"name": str (1-200
    characters, stripped), "billing_timezone": IANA zone name, e.g. "Europe/Berlin"}``.
    The plan tier is not among them (it follows the subscription)."""

    class Meta:
        model = Organization
        fields = ["name", "billing_timezone"]
        extra_kwargs = {"name": {"allow_blank": False}}

    def validate_billing_timezone(self, value: str) -> str:
        """Raises ``ValidationError`` for a name the IANA database (``zoneinfo``) lacks."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise serializers.ValidationError("Not an IANA time zone name.") from None
        return value


class MembershipSerializer(serializers.ModelSerializer):
    """One of the caller's memberships, read-only: ``{"id": int, "organization":
    OrganizationSerializer, "role": "owner"|"admin"|"member", "created_at": ISO 8601 UTC}``."""

    organization = OrganizationSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "organization", "role", "created_at"]
        read_only_fields = fields


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Invite an associate",
            value={"email": "associate@demo-law.test", "role": "member"},
            request_only=True,
        ),
        OpenApiExample(
            "Invitation",
            value={
                "id": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
                "email": "associate@demo-law.test",
                "role": "member",
                "status": "sent",
                "invited_by": "owner@demo-law.test",
                "created_at": "2026-11-02T09:45:00Z",
                "expires_at": "2026-11-05T09:45:00Z",
                "sent_at": "2026-11-02T09:45:02Z",
                "used_at": None,
                "revoked_at": None,
            },
            response_only=True,
        ),
    ]
)
class InvitationSerializer(serializers.ModelSerializer):
    """An invitation: input ``{"email": str, "role": "owner"|"admin"|"member"}`` (role
    default ``member``); output adds ``id``, ``status`` ("pending" until the job sent it,
    "sent", "used", "revoked", "expired"), ``invited_by`` (email or null) and the UTC
    times ``created_at``, ``expires_at``, ``sent_at``, ``used_at``, ``revoked_at``. The
    token is never part of it (it exists only in the email)."""

    status = serializers.SerializerMethodField()
    invited_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "role",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "sent_at",
            "used_at",
            "revoked_at",
        ]
        read_only_fields = [f for f in fields if f not in ("email", "role")]

    def get_status(self, obj) -> str:
        from tenancy.invitations import invitation_status

        return invitation_status(obj)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Accept",
            value={
                "token": "0b5d1f2e8c3a4f7e9a416d2c8e7b9f10.Xc9...",
                "password": "a-long-passphrase",
            },
            request_only=True,
        ),
        OpenApiExample(
            "Accepted",
            value={
                "email": "associate@demo-law.test",
                "organization": "0b5d1f2e-8c3a-4f7e-9a41-6d2c8e7b9f10",
                "role": "member",
            },
            response_only=True,
        ),
    ]
)
class InvitationAcceptSerializer(serializers.Serializer):
    """``{"token": str, "password": str}`` in; ``{"email", "organization" (uuid),
    "role"}`` out. The password is checked by Django's validators (new account, or one
    without a password) or must be the account's current one (an existing account)."""

    token = serializers.CharField(max_length=200, write_only=True, trim_whitespace=True)
    password = serializers.CharField(max_length=4096, write_only=True, trim_whitespace=False)
    email = serializers.EmailField(read_only=True)
    organization = serializers.UUIDField(read_only=True)
    role = serializers.CharField(read_only=True)
