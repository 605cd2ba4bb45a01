"""Admin for billing events: read-only (money), filterable, searchable by request id."""

from django.contrib import admin

from billing.models import BillingEvent


@admin.register(BillingEvent)
class BillingEventAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
