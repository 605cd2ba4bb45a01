"""Admin for billing events: read-only (money), filterable, searchable by request id; and
the organization admin, extended with this month's usage."""

from django.contrib import admin, messages
from django.utils.html import format_html_join

from billing.models import BillingEvent, MeterReport, UsageAggregate
from billing.reporting import reconciliation
from billing.selectors import month_period, usage_summary
from tenancy.admin import OrganizationAdmin
from tenancy.context import tenant_context
from tenancy.models import Organization


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
    """The Stripe outbox, read-only row by row. Actions (they need the change permission):

    * ``retry_failed``: queue failed aggregates again, only while their first send is
      within ``STRIPE_RESEND_WINDOW_HOURS`` (Stripe deduplicates an identifier and
      replays an idempotency key for about 24 hours only); older ones are refused.
    * ``reconciled_stripe_has_it`` / ``reconciled_stripe_lacks_it``: close a
      reconciliation (status ``needs_reconciliation``, or ``failed`` past the window)
      after checking Stripe's meter event summaries
      (``reconciliation.resolve_reconciliation``).
    """

    list_display = [
        "identifier",
        "organization",
        "meter_event_name",
        "period_start",
        "sequence",
        "value",
        "status",
        "attempts",
        "first_sent_at",
        "sent_at",
    ]
    list_filter = ["status", "meter_event_name", "organization", "period_start"]
    search_fields = ["identifier", "organization__slug", "last_error"]
    date_hierarchy = "period_start"
    list_select_related = ["organization"]
    actions = ["retry_failed", "reconciled_stripe_has_it", "reconciled_stripe_lacks_it"]

    @admin.action(
        description="Retry the selected failed aggregates (same identifier; only within the "
        "resend window after their first send)",
        permissions=["change"],
    )
    def retry_failed(self, request, queryset):
        """Queue the selected ``failed`` aggregates again
        (``reconciliation.requeue_failed``: ``pending``, attempts 0, same identifier) for
        the next ``report_usage`` run; those first sent before
        ``reconciliation.resend_cutoff()`` are refused (Stripe deduplicates an identifier
        for about 24 hours only: reconcile them against Stripe's meter event summaries
        instead). The messages say what was queued and what refused."""
        count, refused = reconciliation.requeue_failed(aggregates=queryset)
        self.message_user(
            request,
            f"{count} aggregate(s) queued for the next report_usage run (same identifier: "
            "Stripe deduplicates it for about 24 hours after the first send).",
        )
        if refused:
            hours = reconciliation.resend_window().total_seconds() / 3600
            self.message_user(
                request,
                f"{len(refused)} aggregate(s) refused, first sent more than {hours:g} h ago: "
                "a resend could be counted twice. Reconcile them against Stripe's meter event "
                "summaries, then use a 'Reconciled' action: " + ", ".join(refused),
                level=messages.ERROR,
            )

    @admin.action(
        description="Reconciled: Stripe HAS these (mark sent, events posted)",
        permissions=["change"],
    )
    def reconciled_stripe_has_it(self, request, queryset):
        """After checking Stripe's meter event summaries: Stripe counted the selected
        aggregates, so they become ``sent`` and their events ``posted``."""
        self._reconcile(request, queryset, stripe_has_it=True)

    @admin.action(
        description="Reconciled: Stripe does NOT have these (send again)",
        permissions=["change"],
    )
    def reconciled_stripe_lacks_it(self, request, queryset):
        """After checking Stripe's meter event summaries: Stripe did not count the
        selected aggregates, so they are queued to be sent again as new."""
        self._reconcile(request, queryset, stripe_has_it=False)

    def _reconcile(self, request, queryset, *, stripe_has_it: bool) -> None:
        by = getattr(request.user, "email", "") or str(request.user.pk)
        done = sum(
            reconciliation.resolve_reconciliation(
                aggregate=aggregate, stripe_has_it=stripe_has_it, by=by
            )
            for aggregate in queryset
        )
        self.message_user(request, f"{done} aggregate(s) reconciled.")
        skipped = queryset.count() - done
        if skipped:
            self.message_user(
                request,
                f"{skipped} aggregate(s) unchanged: only failed or needs-reconciliation "
                "aggregates that were sent at least once can be reconciled.",
                level=messages.WARNING,
            )

    def has_change_permission(self, request, obj=None):
        # The actions need the model's change permission on the changelist;
        # a single aggregate's page stays read-only for everyone.
        return obj is None and admin.ModelAdmin.has_change_permission(self, request)


@admin.register(MeterReport)
class MeterReportAdmin(_ReadOnlyAdmin):
    """Usage-reporting runs (``report_usage`` and ``POST report-usage/``), read-only:
    status, counts and ``detail`` (the error of a failed run), filterable by status and
    organization, searchable by id, slug and detail."""

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
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "dry_run", "organization", "created_at"]
    search_fields = ["id", "organization__slug", "detail"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]


# Billing extends tenancy's organization admin (tenancy does not import billing): the
# registered OrganizationAdmin is replaced by a subclass with the usage field.
admin.site.unregister(Organization)


@admin.register(Organization)
class BillingOrganizationAdmin(OrganizationAdmin):
    """``tenancy.admin.OrganizationAdmin`` plus this month's usage (read-only) on the
    change page."""

    readonly_fields = [*OrganizationAdmin.readonly_fields, "current_period_usage"]

    @admin.display(description="Current period usage")
    def current_period_usage(self, obj):
        """This calendar month (billing time zone): count, quantity and cents per event name,
        as HTML; ``"-"`` on the add page."""
        if obj is None or obj.pk is None:
            return "-"
        start, end = month_period(obj)
        with tenant_context(obj):  # staff's one explicit cross-tenant read (RLS applies)
            lines = usage_summary(organization=obj, start=start, end=end)
        if not lines:
            return f"No usage from {start:%Y-%m-%d} to {end:%Y-%m-%d} ({start.tzinfo})."
        total = sum(line["cost_cents"] for line in lines)
        rows = format_html_join(
            "",
            "<li>{}: {} events, quantity {}, {} cents</li>",
            (
                (line["event_name"], line["count"], line["quantity"], line["cost_cents"])
                for line in lines
            ),
        )
        return format_html_join(
            "",
            "<p>{} to {} ({}), total {} cents</p><ul>{}</ul>",
            [(f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}", str(start.tzinfo), total, rows)],
        )
