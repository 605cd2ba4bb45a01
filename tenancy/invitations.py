"""Invitations: an organization invites a person by email to join it with a role.

The life of an invitation:

1. ``invitation_create`` (the API's ``POST .../invitations/``, ``onboard_tenant`` without
   ``--password``) writes the row and defers the ``tenancy.send_invitation`` job in the same
   transaction: the invitation and its email commit together or not at all.
2. The job mints the token, stores only its SHA-256 digest (``token_hash``) and sends the
   email with Django's email framework (``EMAIL_URL``; the console backend in
   development), in one transaction: the token exists nowhere but in the email (not in the
   database, not in the job's arguments, not in a log line). Run twice (a worker killed
   after sending), it mints a new token and sends it again; the earlier link stops working.
3. ``invitation_accept`` (``POST /api/v1/auth/invitations/accept/``, no JWT) takes the token
   and a password, claims the invitation with a conditional update (``used_at IS NULL``,
   not revoked, not expired: of two concurrent accepts one wins, the other is refused)
   and creates or links the user and the membership in the same transaction.
4. ``invitation_revoke`` (``DELETE .../invitations/{id}/``) closes an open invitation.

The token is ``<organization id, 32 hex>.<43 url-safe characters>`` (256 random bits,
``secrets.token_urlsafe``): it names its organization, so accepting it is a lookup inside
that organization's tenant context (row-level security applies, and no statement reads
the invitations of every organization). A used, expired or revoked token, and one that
matches nothing, is refused with ``InvitationRefused`` (400, a stable ``code``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from tenancy.context import tenant_context
from tenancy.models import Invitation, Membership, MembershipRole, Organization, User

logger = logging.getLogger("tenancy.invitations")

ROLE_RANK = {MembershipRole.MEMBER: 1, MembershipRole.ADMIN: 2, MembershipRole.OWNER: 3}

#: The stable ``code`` of each refusal (the API's 400/403 body).
INVALID = "invitation_invalid"
USED = "invitation_used"
EXPIRED = "invitation_expired"
REVOKED = "invitation_revoked"
ALREADY_MEMBER = "already_member"
ROLE_FORBIDDEN = "role_forbidden"
WRONG_PASSWORD = "password_mismatch"


class InvitationRefused(Exception):
    """An invitation cannot be created, revoked or accepted. ``code`` (str) is one of the
    constants above, ``detail`` (str) says why in words, ``errors`` (dict of field ->
    list of messages, or None) carries a password validator's messages."""

    def __init__(self, code: str, detail: str, errors: dict | None = None):
        super().__init__(detail)
        self.code, self.detail, self.errors = code, detail, errors


def token_hash(token: str) -> str:
    """The SHA-256 hex digest (64 characters) of ``token`` (UTF-8), as stored in
    ``Invitation.token_hash``."""
    return hashlib.sha256(token.encode()).hexdigest()


def _mint_token(organization_id: uuid.UUID) -> str:
    return f"{organization_id.hex}.{secrets.token_urlsafe(32)}"


def _token_organization(token: str) -> Organization | None:
    """The organization a token names, or None for a token of the wrong shape."""
    if not isinstance(token, str) or len(token) > 200 or "." not in token:
        return None
    org_hex = token.split(".", 1)[0]
    if len(org_hex) != 32:
        return None
    try:
        organization_id = uuid.UUID(hex=org_hex)
    except ValueError:
        return None
    return Organization.objects.filter(pk=organization_id).first()


def _role_of(*, organization: Organization, user: User | None) -> str | None:
    if user is None:
        return None
    return (
        Membership.objects.filter(organization=organization, user=user)
        .values_list("role", flat=True)
        .first()
    )


def _may_manage(*, organization: Organization, acting_user: User | None, role: str) -> bool:
    """Operators (``acting_user`` None: commands) and staff may invite any role; a member
    may invite or revoke a role that ranks no higher than their own (an admin cannot
    invite an owner)."""
    if acting_user is None or acting_user.is_staff:
        return True
    own = _role_of(organization=organization, user=acting_user)
    return own is not None and ROLE_RANK[own] >= ROLE_RANK[role]


# --- selectors --------------------------------------------------------------------------


def invitation_list(*, organization: Organization):
    """The invitations of ``organization``, newest first (a ``TenantQuerySet``), with
    ``invited_by`` joined."""
    return (
        Invitation.objects.for_organization(organization)
        .select_related("invited_by")
        .order_by("-created_at", "-id")
    )


def invitation_open_for(*, organization: Organization, email: str) -> Invitation | None:
    """The newest open invitation (not used, not revoked, not expired) of ``email``
    (case-insensitive) to ``organization``, or None."""
    return (
        invitation_list(organization=organization)
        .filter(
            email__iexact=email,
            used_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .first()
    )


def invitation_status(invitation: Invitation, *, now=None) -> str:
    """``"used"``, ``"revoked"``, ``"expired"``, ``"pending"`` (not yet sent by the job) or
    ``"sent"``, in that order of precedence; ``now`` is an aware UTC datetime (default
    now)."""
    now = now or timezone.now()
    if invitation.used_at is not None:
        return "used"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= now:
        return "expired"
    return "sent" if invitation.sent_at is not None else "pending"


def invitation_status_q(status: str, *, now=None) -> Q:
    """The filter of the invitations whose ``invitation_status`` is ``status`` (one of
    ``INVITATION_STATUSES``), the same precedence as a ``Q``; ``now`` an aware UTC datetime
    (default now).

    Raises:
        ValueError: ``status`` is not one of ``INVITATION_STATUSES``.
    """
    now = now or timezone.now()
    is_open = Q(used_at__isnull=True, revoked_at__isnull=True)
    live = is_open & Q(expires_at__gt=now)
    queries = {
        "used": Q(used_at__isnull=False),
        "revoked": Q(used_at__isnull=True, revoked_at__isnull=False),
        "expired": is_open & Q(expires_at__lte=now),
        "sent": live & Q(sent_at__isnull=False),
        "pending": live & Q(sent_at__isnull=True),
    }
    if status not in queries:
        raise ValueError(f"unknown invitation status {status!r}")
    return queries[status]


#: The statuses ``invitation_status`` returns, in the order an invitation lives through them.
INVITATION_STATUSES = ("pending", "sent", "used", "revoked", "expired")


# --- services ---------------------------------------------------------------------------


@transaction.atomic
def invitation_create(
    *, organization: Organization, acting_user: User | None, email: str, role: str
) -> Invitation:
    """Invite ``email`` to ``organization`` as ``role``, and defer the job that emails the
    link (``send_invitation``) in the same transaction. Earlier open invitations of the
    same email to this organization are revoked, so only the newest link works. Expires
    ``INVITATION_TTL_HOURS`` hours (UTC) after creation.

    Runs in the caller's tenant context (a request's, or ``tenant_context`` in a command).

    Args:
        email: the invitee's address (validated; compared case-insensitively).
        role: one of ``MembershipRole``.
        acting_user: who invites (``invited_by``); None for an operator's command.
    Raises:
        InvitationRefused: ``role_forbidden`` when ``acting_user`` ranks below ``role``
            (an admin inviting an owner); ``already_member`` when ``email`` is already a
            member who can log in (one without a usable password may be invited);
            ``invitation_invalid`` for an invalid email or role.
    """
    from tenancy.tasks import send_invitation

    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise InvitationRefused(INVALID, f"Not a valid email address: {email!r}.") from None
    if role not in MembershipRole.values:
        raise InvitationRefused(INVALID, f"Unknown role {role!r}.")
    if not _may_manage(organization=organization, acting_user=acting_user, role=role):
        raise InvitationRefused(ROLE_FORBIDDEN, f"Only an owner may invite an {role}.")
    members = Membership.objects.filter(organization=organization, user__email__iexact=email)
    # a member who cannot log in yet (an onboarded owner, a backfilled user) may be invited
    if members.exclude(user__password__startswith=UNUSABLE_PASSWORD_PREFIX).exists():
        raise InvitationRefused(ALREADY_MEMBER, f"{email} is already a member.")
    now = timezone.now()
    Invitation.objects.for_organization(organization).filter(
        email__iexact=email, used_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=now)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        invited_by=acting_user,
        created_at=now,
        expires_at=now + timedelta(hours=settings.INVITATION_TTL_HOURS),
    )
    send_invitation.defer(organization_id=str(organization.pk), invitation_id=str(invitation.pk))
    return invitation


@transaction.atomic
def invitation_revoke(
    *, organization: Organization, acting_user: User | None, invitation: Invitation
) -> Invitation:
    """Revoke an open invitation (conditional update: only while ``used_at`` and
    ``revoked_at`` are ``NULL``). Revoking a revoked one changes nothing.

    Raises:
        InvitationRefused: ``invitation_used`` when it was accepted already;
            ``role_forbidden`` when ``acting_user`` ranks below the invitation's role.
    """
    if not _may_manage(organization=organization, acting_user=acting_user, role=invitation.role):
        raise InvitationRefused(
            ROLE_FORBIDDEN, f"Only an owner may revoke an invitation as {invitation.role}."
        )
    invitations_revoke_by_staff(organization=organization, invitation_ids=[invitation.pk])
    invitation.refresh_from_db()
    if invitation.used_at is not None:
        raise InvitationRefused(USED, "This invitation was accepted already.")
    return invitation


def invitations_revoke_by_staff(*, organization: Organization, invitation_ids) -> int:
    """Revoke the open invitations of ``organization`` among ``invitation_ids`` (an
    iterable of UUIDs), with no role rule (staff are not members; ``invitation_revoke``
    checks the acting member's role, then calls this); return how many were revoked
    (``int``).

    One conditional update inside the organization (``used_at`` and ``revoked_at`` still
    ``NULL``): a used or already revoked invitation is left as it is, so running it twice
    revokes nothing more.
    """
    return (
        Invitation.objects.for_organization(organization)
        .filter(pk__in=list(invitation_ids), used_at__isnull=True, revoked_at__isnull=True)
        .update(revoked_at=timezone.now())
    )


def invitation_send(*, organization: Organization, invitation_id) -> str:
    """The body of the ``send_invitation`` job: mint a token, store its digest, email the
    link, in one transaction of ``organization``'s tenant context (a failed send rolls the
    digest back, and the job is retried). Returns ``"sent"``, or the invitation's status
    (``"used"``, ``"revoked"``, ``"expired"``, ``"deleted"``) when there is nothing to send.

    Raises:
        OSError, smtplib.SMTPException: the mail server failed (the job retries).
    """
    with tenant_context(organization):
        invitation = (
            Invitation.objects.for_organization(organization)
            .select_for_update()
            .filter(pk=invitation_id)
            .first()
        )
        if invitation is None:
            return "deleted"
        status = invitation_status(invitation)
        if status not in ("pending", "sent"):
            return status
        token = _mint_token(organization.pk)
        invitation.token_hash = token_hash(token)
        invitation.sent_at = timezone.now()
        invitation.save(update_fields=["token_hash", "sent_at"])
        link = f"{settings.INVITATION_ACCEPT_URL}?token={token}"
        send_mail(
            subject=f"You are invited to {organization.name} on Goldleaves",
            message=(
                f"You are invited to join {organization.name} as {invitation.role}.\n\n"
                f"Accept the invitation and choose your password here:\n{link}\n\n"
                f"(API: POST /api/v1/auth/invitations/accept/ with "
                f'{{"token": "{token}", "password": "..."}}.)\n\n'
                f"The link works once and expires at "
                f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC.\n"
            ),
            from_email=None,  # DEFAULT_FROM_EMAIL
            recipient_list=[invitation.email],
        )
    logger.info("invitation %s of %s sent", invitation.pk, organization.pk)
    return "sent"


def _refusal(invitation: Invitation) -> InvitationRefused:
    status = invitation_status(invitation)
    if status == "used":
        return InvitationRefused(USED, "This invitation was used already.")
    if status == "revoked":
        return InvitationRefused(REVOKED, "This invitation was revoked.")
    return InvitationRefused(EXPIRED, "This invitation has expired; ask for a new one.")


def _accepting_user(*, invitation: Invitation, password: str) -> User:
    """The invitee's user: created with ``password``; or the existing one (matched
    case-insensitively), whose password is set if they had none (an onboarded owner) and
    must be ``password`` if they had one."""
    user = User.objects.select_for_update().filter(email__iexact=invitation.email).first()
    candidate = user or User(email=invitation.email)
    if user is not None and user.has_usable_password():
        if not user.check_password(password):
            raise InvitationRefused(
                WRONG_PASSWORD,
                "An account with this email exists: send its current password.",
            )
        return user
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise InvitationRefused(
            "invalid", "Invalid input.", errors={"password": list(exc.messages)}
        ) from None
    if user is None:
        try:
            with transaction.atomic():  # a savepoint: a concurrent signup of this email
                return User.objects.create_user(
                    email=invitation.email, password=password, organization=invitation.organization
                )
        except IntegrityError:
            user = User.objects.select_for_update().get(email__iexact=invitation.email)
            if user.has_usable_password():
                raise InvitationRefused(
                    WRONG_PASSWORD,
                    "An account with this email exists: send its current password.",
                ) from None
    user.set_password(password)
    user.save()
    return user


def invitation_accept(*, token: str, password: str) -> Membership:
    """Accept the invitation ``token`` names: claim it (``UPDATE ... WHERE used_at IS NULL
    AND revoked_at IS NULL AND expires_at > now()``; the row lock makes a concurrent
    accept wait, then match nothing), create or link the user (``_accepting_user``,
    Django's password validators, ``AUTH_PASSWORD_VALIDATORS``) and give them the
    invitation's role (a member with a lower role is raised to it, never lowered). One
    transaction in the organization's tenant context: a refusal writes nothing.

    Returns:
        the ``Membership``.
    Raises:
        InvitationRefused: ``invitation_invalid`` (no such token), ``invitation_used``,
            ``invitation_expired``, ``invitation_revoked``, ``password_mismatch`` (an
            existing account, another password), ``invalid`` (the password fails a
            validator; ``errors["password"]`` says why).
    """
    organization = _token_organization(token)
    if organization is None:
        raise InvitationRefused(INVALID, "This invitation link is not valid.")
    with tenant_context(organization):
        invitation = (
            Invitation.objects.for_organization(organization)
            .filter(token_hash=token_hash(token))
            .first()
        )
        if invitation is None:
            raise InvitationRefused(INVALID, "This invitation link is not valid.")
        now = timezone.now()
        claimed = (
            Invitation.objects.for_organization(organization)
            .filter(
                pk=invitation.pk,
                token_hash=invitation.token_hash,
                used_at__isnull=True,
                revoked_at__isnull=True,
                expires_at__gt=now,
            )
            .update(used_at=now)
        )
        if not claimed:
            invitation.refresh_from_db()
            raise _refusal(invitation)
        user = _accepting_user(invitation=invitation, password=password)
        Invitation.objects.for_organization(organization).filter(pk=invitation.pk).update(
            accepted_by=user
        )
        if user.organization_id is None:
            user.organization = organization
            user.save(update_fields=["organization"])
        membership, created = Membership.objects.get_or_create(
            organization=organization, user=user, defaults={"role": invitation.role}
        )
        if not created and ROLE_RANK[membership.role] < ROLE_RANK[invitation.role]:
            membership.role = invitation.role
            membership.save(update_fields=["role"])
    logger.info("invitation %s of %s accepted", invitation.pk, organization.pk)
    return membership
