"""Organizations (tenants), users, memberships, and the base class of every tenant-owned model."""

import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.postgres.fields import ArrayField
from django.db import models, transaction
from django.db.models.functions import Lower
from django.utils import timezone


class PlanTier(models.TextChoices):
    """An organization's plan: selects its plan in ``BILLING_PLANS`` (rate limit, prices)."""

    STARTER = "starter", "Starter"
    PRO = "pro", "Pro"
    ENTERPRISE = "enterprise", "Enterprise"


class SubscriptionStatus(models.TextChoices):
    """``Organization.subscription_status``: the status of its Stripe subscription as Stripe
    names it (Stripe API reference, "The Subscription object", ``status``), or ``""``: no
    subscription. ``unpaid`` and ``canceled`` make the tenant API read-only
    (``billing.stripe_sync.entitlement``); ``past_due`` changes nothing yet."""

    NONE = "", "No subscription"
    INCOMPLETE = "incomplete", "Incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired", "Incomplete, expired"
    TRIALING = "trialing", "Trialing"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"
    UNPAID = "unpaid", "Unpaid"
    PAUSED = "paused", "Paused"


class Organization(models.Model):
    """A law firm: the tenant. Every tenant-owned row carries its ``organization_id``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    plan_tier = models.CharField(max_length=20, choices=PlanTier.choices, default=PlanTier.STARTER)
    stripe_customer_id = models.CharField(max_length=255, blank=True, default="")
    # The Stripe subscription, kept in step by billing.stripe_sync (onboarding job, webhooks);
    # read-only in the admin.
    # db_default: set-based INSERTs that predate these columns (tenancy.backfill) get "".
    stripe_subscription_id = models.CharField(max_length=255, blank=True, default="", db_default="")
    subscription_status = models.CharField(
        max_length=20, choices=SubscriptionStatus.choices, blank=True, default="", db_default=""
    )
    subscription_updated_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="UTC; the Stripe timestamp of the subscription state applied here (the "
        "newest wins).",
    )
    current_period_start = models.DateTimeField(null=True, blank=True, editable=False)
    current_period_end = models.DateTimeField(null=True, blank=True, editable=False)
    billing_timezone = models.CharField(
        max_length=64,
        default="UTC",
        help_text="IANA time zone used for billing periods.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Unique through Meta.constraints rather than unique=True, which would also make a
    # varchar_pattern_ops index for LIKE queries that nothing runs on this column.
    backfill_key = models.CharField(
        max_length=300,
        null=True,
        blank=True,
        editable=False,
        help_text="Set by backfill_organizations: 'domain:<domain>' or 'email:<address>'.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            # The name PostgreSQL gave the column's UNIQUE when 0003 added it.
            models.UniqueConstraint(
                fields=["backfill_key"], name="tenancy_organization_backfill_key_key"
            )
        ]

    def __str__(self) -> str:
        return self.name


class UserManager(BaseUserManager):
    """Users log in with their email, matched case-insensitively."""

    use_in_migrations = True

    def _create_user(self, email, password, **extra):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra):
        """A non-staff user; ``password`` ``None`` gives an unusable password.
        Raises ``ValueError`` without an email, ``IntegrityError`` if it is taken
        (case-insensitively)."""
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email, password=None, **extra):
        """A staff superuser (``createsuperuser``); otherwise as ``create_user``."""
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, email):
        """The user whose email equals ``email`` case-insensitively (login); raises
        ``User.DoesNotExist``."""
        return self.get(email__iexact=email)


class LowerExact(models.Lookup):
    """``iexact`` on ``User.email`` as ``LOWER(email) = LOWER(value)``: the expression of
    the unique index ``tenancy_user_email_ci_unique``, so a lookup by email (login, an
    invitation's acceptance, onboarding) is an index scan. Django's own ``iexact`` compares
    ``UPPER(email::text)``, which no index serves: a sequential scan of every user (147 ms
    a lookup at 1M users, against 0.1-0.4 ms through the index, measured). LOWER is also
    the rule the index enforces (PostgreSQL manual, 11.7 "Indexes on Expressions"; 9.4
    "String Functions", ``lower``)."""

    lookup_name = "iexact"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"LOWER({lhs}) = LOWER({rhs})", (*lhs_params, *rhs_params)


class User(AbstractBaseUser, PermissionsMixin):
    """A person; email is the login (unique, case-insensitive).

    ``organization`` is the user's default organization (the JWT ``org`` claim);
    access itself is granted by ``Membership`` rows.
    """

    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=200, blank=True, default="")
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="default_users",
        help_text="Default organization (JWT 'org' claim).",
    )
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    tokens_valid_after = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="UTC; JWTs issued before this instant are refused (set on a password "
        "change or deactivation).",
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="tenancy_user_email_ci_unique")]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._was_active = self.__dict__.get("is_active")
        self._revoke_tokens = False
        self._rehashing = False

    def __str__(self) -> str:
        return self.email

    def check_password(self, raw_password) -> bool:
        """Django's check; a hash upgrade it saves on the way is not a password change
        (it revokes no token)."""
        self._rehashing = True
        try:
            return super().check_password(raw_password)
        finally:
            self._rehashing = False

    def set_password(self, raw_password) -> None:
        """Django's ``set_password``; for an existing user also a credential change, so
        the next ``save()`` revokes the user's tokens (see ``save``). Every path that
        changes a password goes through here: the admin's password form, the
        ``changepassword`` command, password reset."""
        super().set_password(raw_password)
        if not self._rehashing and not self._state.adding:
            self._revoke_tokens = True

    def set_unusable_password(self) -> None:
        """Django's ``set_unusable_password``; a credential change like ``set_password``."""
        super().set_unusable_password()
        if not self._state.adding:
            self._revoke_tokens = True

    def save(self, *args, **kwargs):
        """Save; after a password change (``set_password``) or a deactivation
        (``is_active`` from true to false) of an existing user, in the same transaction:
        ``tokens_valid_after`` = now (UTC), so every earlier access and refresh token is
        refused, and every outstanding refresh token is blacklisted
        (``tenancy.tokens.revoke_refresh_tokens``). ``QuerySet.update`` bypasses this:
        use ``save()`` to change passwords or deactivate users."""
        deactivated = self._was_active is True and self.is_active is False
        revoke = not self._state.adding and (self._revoke_tokens or deactivated)
        if revoke:
            from tenancy.tokens import revoke_refresh_tokens

            self.tokens_valid_after = timezone.now()
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "tokens_valid_after"}
            with transaction.atomic():
                super().save(*args, **kwargs)
                revoke_refresh_tokens(user_id=self.pk)
        else:
            super().save(*args, **kwargs)
        self._revoke_tokens = False
        self._was_active = self.is_active


User._meta.get_field("email").register_lookup(LowerExact)


class MembershipRole(models.TextChoices):
    """A member's role in an organization: ``owner``, ``admin`` or ``member``."""

    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class TenantQuerySet(models.QuerySet):
    """QuerySet of a tenant-owned model."""

    def for_organization(self, organization):
        """Rows of ``organization`` (an ``Organization`` or its id) only."""
        org_id = getattr(organization, "pk", organization)
        return self.filter(organization_id=org_id)

    def delete(self):
        """Django's ``QuerySet.delete`` through ``tenancy.deletion.TenantCollector``, so the
        cascades and the final DELETE carry ``organization_id``. Returns ``(total,
        {model label: count})``; raises ``ProtectedError`` / ``RestrictedError`` as Django
        does."""
        from tenancy.deletion import TenantCollector

        self._not_support_combined_queries("delete")
        if self.query.is_sliced:
            raise TypeError("Cannot use 'limit' or 'offset' with delete().")
        if self.query.distinct_fields:
            raise TypeError("Cannot call delete() after .distinct(*fields).")
        if self._fields is not None:
            raise TypeError("Cannot call delete() after .values() or .values_list()")
        del_query = self._chain()
        del_query._for_write = True
        del_query.query.select_for_update = False
        del_query.query.select_related = False
        del_query.query.clear_ordering(force=True)
        collector = TenantCollector(using=del_query.db, origin=self)
        collector.collect(del_query)
        result = collector.delete()
        self._result_cache = None
        return result

    delete.alters_data = True
    delete.queryset_only = True


class TenantModel(models.Model):
    """Abstract base of every tenant-owned model: an ``organization`` FK (column
    ``organization_id``, NOT NULL) and the ``for_organization`` queryset method.

    In the database the primary key is ``(organization_id, id)`` (``tenancy.keys``), the
    distribution key of Citus; Django keeps ``id`` as the model's primary key (it is
    unique by itself: a UUID, or a sequence). So that every statement Django writes for a
    row names its organization (one shard), ``save()`` updates ``WHERE organization_id =
    %s AND id = %s``, ``delete()`` goes through ``tenancy.deletion.TenantCollector`` and
    ``refresh_from_db()`` reads with the organization.
    """

    # No index of its own (db_index=False): the primary key (organization_id, id) leads
    # with the column, so every lookup by organization (and the cascade of an
    # organization's deletion) has an index; a second one would be paid on every write.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, db_index=False)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True

    def _do_update(self, base_qs, using, pk_val, values, update_fields, forced_update):
        """Django's UPDATE of ``save()``, restricted to this row's organization.

        Raises:
            ValueError: no row matched in this organization but the id exists in another
                one: the instance's ``organization`` was changed, and a row never moves to
                another organization (the INSERT Django would try next would copy it).
        """
        scoped = base_qs.filter(organization_id=self.organization_id)
        updated = super()._do_update(scoped, using, pk_val, values, update_fields, forced_update)
        if not updated and base_qs.filter(pk=pk_val).exists():
            raise ValueError(
                f"{self._meta.label} {pk_val} belongs to another organization; "
                "a tenant row cannot move to another organization."
            )
        return updated

    def delete(self, using=None, keep_parents=False):
        """Django's ``Model.delete`` through ``tenancy.deletion.TenantCollector``. Returns
        ``(total, {model label: count})``; raises ``ValueError`` for an unsaved instance,
        ``ProtectedError`` / ``RestrictedError`` as Django does."""
        from django.db import router

        from tenancy.deletion import TenantCollector

        if self.pk is None:
            raise ValueError(
                f"{self._meta.object_name} object can't be deleted because its "
                f"{self._meta.pk.attname} attribute is set to None."
            )
        using = using or router.db_for_write(self.__class__, instance=self)
        collector = TenantCollector(using=using, origin=self)
        collector.collect([self], keep_parents=keep_parents)
        return collector.delete()

    delete.alters_data = True

    def refresh_from_db(self, using=None, fields=None, from_queryset=None):
        """Django's ``refresh_from_db``, reading with ``organization_id`` when it is loaded
        (a deferred ``organization_id`` is itself loaded by id alone)."""
        if from_queryset is None and "organization_id" in self.__dict__:
            from_queryset = self.__class__._base_manager.filter(
                organization_id=self.organization_id
            )
        return super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)


class Membership(TenantModel):
    """Grants ``user`` a ``role`` in ``organization``; unique per (user, organization)."""

    # No index of its own (db_index=False): the unique (organization, user) and the primary
    # key (organization_id, id) both lead with it, and a third index would be paid on
    # every membership written (the backfill writes one per user).
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(
        max_length=20, choices=MembershipRole.choices, default=MembershipRole.MEMBER
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "user"], name="tenancy_membership_unique"
            )
        ]
        ordering = ["organization__name"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


class StaffAccessAction(models.TextChoices):
    """What a staff request under ``cross_tenant`` did (``tenancy.audit``)."""

    VIEW_LIST = "view_list", "view list"
    VIEW_OBJECT = "view_object", "view object"
    CHANGE = "change", "change"
    DELETE = "delete", "delete"
    EXPORT = "export", "export"
    OTHER = "other", "other page"


class StaffAccess(models.Model):
    """One staff request made through the cross-tenant path (the Django admin under
    ``tenancy.context.cross_tenant``), written in that request's transaction
    (``tenancy.audit.staff_access_record``).

    Append-only: the app never updates or deletes a row, and a trigger installed by
    migration 0006 refuses ``UPDATE`` and ``DELETE`` for every role (PostgreSQL manual,
    "CREATE TRIGGER"). Not a tenant table: one row may touch several organizations
    (``organization_ids``), and it holds no foreign key, so a row outlives the staff user
    and the organizations it names. ``created_at`` is UTC.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    staff_user_id = models.BigIntegerField(help_text="The staff user's id (no foreign key).")
    staff_email = models.CharField(max_length=254)
    action = models.CharField(max_length=16, choices=StaffAccessAction.choices)
    model = models.CharField(
        max_length=200, blank=True, help_text="app_label.model_name; empty for other pages."
    )
    object_id = models.CharField(max_length=200, blank=True)
    object_ids = models.JSONField(
        default=list, blank=True, help_text="Every object id acted on (list pages, actions)."
    )
    organization_ids = ArrayField(
        models.UUIDField(), default=list, blank=True, help_text="The organizations touched."
    )
    request_id = models.CharField(
        max_length=64, blank=True, help_text="The server request id (X-Server-Request-ID)."
    )
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=2000)
    status_code = models.PositiveSmallIntegerField(null=True)
    reason = models.CharField(max_length=200, help_text="The cross_tenant(reason=...) given.")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "staff access"
        verbose_name_plural = "staff access log"
        indexes = [
            models.Index(fields=["staff_user_id", "created_at"], name="staffaccess_user_idx")
        ]

    def __str__(self) -> str:
        return f"{self.staff_email} {self.action} {self.model or self.path}"


class Invitation(TenantModel):
    """An invitation to join ``organization`` with ``role``, sent to ``email``.

    The link's token is never stored: only its SHA-256 hex digest (``token_hash``), so a
    copy of the table (or of the job queue) lets nobody accept an invitation. The token is
    minted by the job that sends the email (``tenancy.invitations``), which sets
    ``token_hash`` and ``sent_at``; both are ``NULL`` until then. The token names its organization
    (``tenancy.invitations``), so accepting it is a lookup inside that organization. Open
    while ``used_at`` and ``revoked_at`` are ``NULL`` and ``expires_at`` (UTC) is in the
    future; accepting sets ``used_at`` once (a conditional update), so a link is single
    use.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the primary key (organization_id, id) leads with it.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations", db_index=False
    )
    email = models.EmailField(max_length=254)
    role = models.CharField(
        max_length=20, choices=MembershipRole.choices, default=MembershipRole.MEMBER
    )
    token_hash = models.CharField(max_length=64, null=True, blank=True, editable=False)
    invited_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    used_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "token_hash"], name="tenancy_invitation_token_unique"
            )
        ]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.email} -> {self.organization} ({self.role})"
