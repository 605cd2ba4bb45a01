"""Admin for billing events: read-only (money), filterable, searchable by request id."""

from django.contrib import admin

from billing.models import BillingEvent, MeterReport, UsageAggregate, UsageAggregateStatus


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Money records: visible and searchable, never edited or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(BillingEvent)
class BillingEventAdmin(_ReadOnlyAdmin):
    """Staff can read and filter events; nobody adds, edits or deletes them here."""

    list_display = [
        "created_at",
        "organization",
        "event_name",
        "quantity",
        "unit",
        "unit_cost_cents",
        "status",
        "user",
        "request_id",
    ]
    list_filter = ["organization", "event_name", "status", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["request_id"]
    list_select_related = ["organization", "user"]
    ordering = ["-created_at"]
    show_full_result_count = False  # no COUNT(*) over the whole table on each page

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]


@admin.register(UsageAggregate)
class UsageAggregateAdmin(_ReadOnlyAdmin):
    """The Stripe outbox. Failed aggregates can be queued for another try (same identifier,
    so Stripe still counts each at most once)."""

    list_display = [
        "identifier",
        "organization",
        "meter_event_name",
        "period_start",
        "sequence",
        "value",
        "status",
        "attempts",
        "sent_at",
    ]
    list_filter = ["status", "meter_event_name", "organization", "period_start"]
    search_fields = ["identifier", "organization__slug", "last_error"]
    date_hierarchy = "period_start"
    list_select_related = ["organization"]
    actions = ["retry_failed"]

    @admin.action(
        description="Retry the selected failed aggregates (same identifier)",
        permissions=["change"],
    )
    def retry_failed(self, request, queryset):
        count = queryset.filter(status=UsageAggregateStatus.FAILED).update(
            status=UsageAggregateStatus.PENDING, attempts=0, next_attempt_at=None
        )
        self.message_user(request, f"{count} aggregate(s) queued for the next report_usage run.")

    def has_change_permission(self, request, obj=None):
        # The retry action needs the model's change permission on the changelist;
        # a single aggregate's page stays read-only for everyone.
        return obj is None and admin.ModelAdmin.has_change_permission(self, request)


@admin.register(MeterReport)
class MeterReportAdmin(_ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "status",
        "dry_run",
        "until",
        "aggregates_sent",
        "aggregates_failed",
        "events_posted",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "dry_run", "organization", "created_at"]
    search_fields = ["id", "organization__slug", "detail"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]
