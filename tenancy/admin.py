"""Django admin for organizations, users, memberships and invitations (staff's cross-tenant
tool, see ``tenancy.middleware.AdminCrossTenantMiddleware``), and the read-only staff access
log (``tenancy.audit``)."""

import uuid
from collections import defaultdict

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from core.admin import AllFieldsReadOnlyMixin, ReadOnlyModelAdmin
from tenancy.invitations import (
    INVITATION_STATUSES,
    invitation_status,
    invitation_status_q,
    invitations_revoke_by_staff,
)
from tenancy.models import Invitation, Membership, Organization, StaffAccess, User


class MembershipInline(admin.TabularInline):
    """The organization's members (user, role) on its change page; users by autocomplete."""

    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    """Organizations: filter by plan tier and creation date, search name/slug/Stripe
    customer id; the change page shows memberships inline. The billing app registers a
    subclass in its place that adds this month's usage (``billing.admin``)."""

    list_display = [
        "name",
        "slug",
        "plan_tier",
        "billing_timezone",
        "stripe_customer_id",
        "subscription_status",
        "created_at",
    ]
    list_filter = ["plan_tier", "subscription_status", "created_at"]
    search_fields = ["name", "slug", "stripe_customer_id", "stripe_subscription_id"]
    prepopulated_fields = {"slug": ["name"]}
    # The Stripe ids and the subscription's state are written by billing.stripe_sync (the
    # onboarding job and Stripe's webhooks), never by hand.
    readonly_fields = [
        "id",
        "created_at",
        "stripe_customer_id",
        "stripe_subscription_id",
        "subscription_status",
        "subscription_updated_at",
        "current_period_start",
        "current_period_end",
    ]
    inlines = [MembershipInline]


class UserMembershipInline(admin.TabularInline):
    """The user's memberships, read-only, on the user's change page (add them from the
    organization's page)."""

    model = Membership
    extra = 0
    fields = ["organization", "role", "created_at"]
    readonly_fields = ["organization", "created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """Users (email login): filter by default organization and flags, search email and
    name; Django's password change and add forms, with the default organization."""

    ordering = ["email"]
    list_display = [
        "email",
        "full_name",
        "organization",
        "is_staff",
        "is_active",
        "date_joined",
    ]
    list_filter = ["organization", "is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "full_name"]
    autocomplete_fields = ["organization"]
    inlines = [UserMembershipInline]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name", "organization")}),
        (
            "Permissions",
            {
                "fields": (
                    "is_active",
                    "is_staff",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                )
            },
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "password1", "password2", "organization"),
            },
        ),
    )


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Memberships of every organization: filter by organization and role, search the
    user's email and the organization's name or slug."""

    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["organization", "role"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user"]
    list_select_related = ["user", "organization"]


class InvitationStatusFilter(admin.SimpleListFilter):
    """Invitations by status, as ``tenancy.invitations.invitation_status`` names them."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(status, status) for status in INVITATION_STATUSES]

    def queryset(self, request, queryset):
        if self.value() not in INVITATION_STATUSES:
            return queryset
        return queryset.filter(invitation_status_q(self.value()))


@admin.register(Invitation)
class InvitationAdmin(AllFieldsReadOnlyMixin, admin.ModelAdmin):
    """Invitations of every organization, read-only: filter by status, organization and
    role, search the email and the organization's name or slug. Staff cannot add one
    (invitations are made through the API, whose job sends the email) or delete one (the
    history stays); the one action revokes the selected open invitations."""

    list_display = ["email", "organization", "role", "status", "created_at", "expires_at"]
    list_filter = [InvitationStatusFilter, "organization", "role"]
    search_fields = ["email", "organization__name", "organization__slug"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    actions = ["revoke_open"]

    @admin.display(description="status")
    def status(self, obj) -> str:
        return invitation_status(obj)

    @admin.action(description="Revoke the selected open invitations", permissions=["change"])
    def revoke_open(self, request, queryset):
        by_organization = defaultdict(list)
        for organization_id, pk in queryset.values_list("organization_id", "pk"):
            by_organization[organization_id].append(pk)
        organizations = Organization.objects.in_bulk(list(by_organization))
        revoked = sum(
            invitations_revoke_by_staff(organization=organizations[org_id], invitation_ids=ids)
            for org_id, ids in by_organization.items()
        )
        selected = sum(len(ids) for ids in by_organization.values())
        self.message_user(
            request,
            f"Revoked {revoked} of {selected} selected invitations (used and already revoked "
            "ones are left as they are).",
            messages.SUCCESS,
        )

    def has_add_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class StaffAccessOrganizationFilter(admin.SimpleListFilter):
    """Rows that touched one organization (``organization_ids`` contains it)."""

    title = "organization"
    parameter_name = "organization"

    def lookups(self, request, model_admin):
        return [(str(o.pk), o.name) for o in Organization.objects.order_by("name")[:200]]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(organization_ids__contains=[uuid.UUID(value)])
        except ValueError:
            return queryset.none()


@admin.register(StaffAccess)
class StaffAccessAdmin(AllFieldsReadOnlyMixin, ReadOnlyModelAdmin):
    """The staff access log (``tenancy.audit``), read-only: filter by action, model,
    organization, staff user and date; search request id, object id, email and path.
    Nobody may add, change or delete a row here (and the database refuses UPDATE and
    DELETE of the table, migration 0006)."""

    list_display = [
        "created_at",
        "staff_email",
        "action",
        "model",
        "object_id",
        "organizations",
        "request_id",
        "status_code",
    ]
    list_filter = [
        "action",
        "model",
        StaffAccessOrganizationFilter,
        "staff_email",
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = ["request_id", "object_id", "staff_email", "path", "reason"]
    date_hierarchy = "created_at"
    actions = None

    @admin.display(description="organizations")
    def organizations(self, obj) -> str:
        return ", ".join(str(o) for o in obj.organization_ids)
