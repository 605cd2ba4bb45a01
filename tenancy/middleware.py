"""Tenant middleware: bearer JWT -> user -> organization -> tenant context."""

import logging
import uuid

from django.db import transaction
from django.http import JsonResponse
from rest_framework import exceptions

from core.db import transaction_aborted
from core.paths import app_path
from tenancy.audit import staff_access_begin, staff_access_record
from tenancy.authentication import JWT_RESULT_ATTR, TenantJWTAuthentication
from tenancy.context import (
    connection_settings_restored,
    cross_tenant,
    set_connection_tenant,
)
from tenancy.selectors import membership_for
from tenancy.tokens import REVOKED_CODE, REVOKED_DETAIL

ORG_HEADER = "X-Organization-ID"

logger = logging.getLogger("tenancy.middleware")


def _error(detail: str, code: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


class TenantMiddleware:
    """Resolves ``request.organization`` and runs the rest of the request in its tenant context.

    * No ``Authorization: Bearer`` header: passes through untouched (health,
      docs, admin, token endpoints); ``request.organization`` is ``None``.
    * The token endpoints (URL names ``token-obtain``, ``token-refresh``,
      ``token-logout``) pass through untouched whatever the header says: they need no
      access token (logout takes the refresh token in its body), and clients often
      still send their stale (expired) one while they get a new one. A URLconf without
      those names has no such exemption (logged once at WARNING), not a 500.
    * Invalid, expired or revoked token (issued before the user's password change or
      deactivation): 401 ``{"detail", "code"}``.
    * Organization: the ``X-Organization-ID`` header if present, else the
      token's ``org`` claim. A header that is not a UUID is a 400; an
      organization the user is not (or no longer) a member of is a 403
      (``code: "organization_forbidden"``): removing a membership locks its access
      tokens out at once.
    * Everything downstream runs in one transaction whose first statement sets
      the transaction-local ``app.current_org`` (see ``tenancy.context``); the
      membership is read inside it, so row-level security applies to it too.
      A 5xx response rolls the transaction back, as an exception would.
    """

    #: URL names of the views that issue tokens: never judged by their bearer header.
    TOKEN_URL_NAMES = ("token-obtain", "token-refresh", "token-logout")

    def __init__(self, get_response):
        self.get_response = get_response
        self.jwt = TenantJWTAuthentication()
        self._token_paths: frozenset[str] | None = None

    def _is_token_endpoint(self, request) -> bool:
        if self._token_paths is None:  # reversed on first use: the URLconf is loaded by then
            self._token_paths = self._reverse_token_paths()
        return request.path_info in self._token_paths

    def _reverse_token_paths(self) -> frozenset[str]:
        """The paths of ``TOKEN_URL_NAMES`` in the URLconf. A name the URLconf does not
        have (``NoReverseMatch``) is left out, with one WARNING per middleware instance:
        then there is no token endpoint to exempt, and a bearer request is judged by its
        token as any other, rather than every bearer request failing with a 500."""
        from django.urls import NoReverseMatch, reverse

        paths, missing = set(), []
        for name in self.TOKEN_URL_NAMES:
            try:
                paths.add(app_path(reverse(name)))
            except NoReverseMatch:
                missing.append(name)
        if missing:
            logger.warning(
                "TenantMiddleware: the URLconf has no URL named %s; no token endpoint is "
                "exempt from the bearer-token check",
                ", ".join(missing),
            )
        return frozenset(paths)

    def __call__(self, request):
        request.organization = None
        request.membership = None
        if self.jwt.get_header(request) is None or self._is_token_endpoint(request):
            return self.get_response(request)
        try:
            result = self.jwt.authenticate(request)
        except exceptions.AuthenticationFailed as exc:
            codes = exc.get_codes()
            code = codes.get("code", "token_not_valid") if isinstance(codes, dict) else str(codes)
            detail = REVOKED_DETAIL if code == REVOKED_CODE else "Token is invalid or expired."
            return _error(detail, code, 401)
        if result is None:  # a header with another scheme: not ours to judge
            return self.get_response(request)
        user, token = result
        raw_org = request.headers.get(ORG_HEADER) or token.get("org")
        if not raw_org:
            return _error(f"No organization: send {ORG_HEADER}.", "organization_required", 403)
        try:
            org_id = uuid.UUID(str(raw_org))
        except ValueError:
            return _error(f"{ORG_HEADER} must be a UUID.", "organization_invalid", 400)

        with connection_settings_restored(), transaction.atomic():
            set_connection_tenant(org_id, user_id=user.pk)
            membership = membership_for(user=user, organization_id=org_id)
            if membership is None:
                return _error(
                    "You are not a member of this organization.",
                    "organization_forbidden",
                    403,
                )
            setattr(request, JWT_RESULT_ATTR, (user, token))
            request.user = user
            # Read back only through tenancy.context.request_organization().
            request.organization = membership.organization
            request.membership = membership
            response = self.get_response(request)
            if response.status_code < 500 and transaction_aborted():
                # A statement failed without a savepoint and the view answered anyway:
                # PostgreSQL would turn the COMMIT into a ROLLBACK, so the client must not
                # be told its writes were kept.
                logger.error(
                    "request %s %s: the view answered %s on an aborted transaction; "
                    "rolled back, answering 500",
                    request.method,
                    request.path,
                    response.status_code,
                )
                response = _error(
                    "The request could not be completed; nothing was saved.",
                    "transaction_aborted",
                    500,
                )
            if response.status_code >= 500:
                transaction.set_rollback(True)
        return response


class AdminCrossTenantMiddleware:
    """Runs Django admin requests of active staff users through ``cross_tenant``.

    The admin is staff's cross-tenant tool (organizations, members, usage across
    firms), so under row-level security it reads and writes through the one
    explicit cross-tenant path; everything else, including the admin login page
    for anonymous users, does not. Each such request writes its ``StaffAccess`` audit
    row in the same transaction (``tenancy.audit``); a 5xx is rolled back with its row.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self._resolved = False
        self.prefix: str | None = None

    def _admin_prefix(self) -> str | None:
        """The admin's path prefix (reversed on first use), or ``None`` when the URLconf
        has no ``admin:index`` (logged once at WARNING): then no request is an admin one."""
        if not self._resolved:
            from django.urls import NoReverseMatch, reverse

            try:
                self.prefix = app_path(reverse("admin:index"))
            except NoReverseMatch:
                logger.warning("AdminCrossTenantMiddleware: the URLconf has no admin:index")
                self.prefix = None
            self._resolved = True
        return self.prefix

    def __call__(self, request):
        prefix = self._admin_prefix()
        user = getattr(request, "user", None)
        if (
            prefix is not None
            and request.path_info.startswith(prefix)
            and user is not None
            and user.is_authenticated
            and user.is_active
            and user.is_staff
        ):
            with cross_tenant(reason="django admin"):
                access = staff_access_begin(request)
                response = self.get_response(request)
                if response.status_code >= 500:
                    transaction.set_rollback(True)
                else:
                    staff_access_record(request=request, response=response, access=access)
                return response
        return self.get_response(request)
