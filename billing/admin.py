"""Admin for billing events: read-only (money), filterable, searchable by request id, money
and quantities in readable form (``billing.formatting``); and the organization admin,
extended with this month's usage (a list column, the change page's lines and chart)."""

import json
from datetime import timedelta

from django.contrib import admin, messages
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from billing.charts import daily_bar_chart
from billing.formatting import format_cents, format_quantity
from billing.models import BillingEvent, MeterReport, UsageAggregate
from billing.plans import METERS
from billing.pricing import line_cost_cents, price_book
from billing.reporting import reconciliation
from billing.selectors import month_period, usage_by_day, usage_by_organization
from billing.stripe_sync import admin as stripe_sync_admin  # noqa: F401 - registers its admins
from billing.usage import usage_summary
from core.admin import ReadOnlyModelAdmin
from tenancy.admin import OrganizationAdmin
from tenancy.context import tenant_context
from tenancy.models import Organization


class EventNameFilter(admin.SimpleListFilter):
    """The event-name filter of the events list: the metered names (``billing.plans.METERS``)
    then the price book's (``settings.BILLING_PRICE_BOOK``), a fixed list. Django's default
    for a field (``AllValuesFieldListFilter``) runs ``SELECT DISTINCT event_name`` over the
    whole table on every page: 0.34 s at 10M events. Same URL parameter (``event_name``)."""

    title = "event name"
    parameter_name = "event_name"

    def lookups(self, request, model_admin):
        """``[(name, name), ...]``: each name once, the meters first."""
        return [(name, name) for name in dict.fromkeys([*METERS, *sorted(price_book())])]

    def queryset(self, request, queryset):
        """The events of the chosen name; all of them when none is chosen."""
        return queryset.filter(event_name=self.value()) if self.value() else queryset


@admin.register(BillingEvent)
class BillingEventAdmin(ReadOnlyModelAdmin):
    """Staff can read and filter events; nobody adds, edits or deletes them here.

    The list keeps six short columns (readable at 1366 px): time, organization, event,
    quantity with its unit (``"3 pages"``), price per unit in currency, status; the request
    id stays searchable and is on the event's page, which shows ``dimensions`` as a
    key/value table."""

    list_display = [
        "created_at",
        "organization",
        "event_name",
        "quantity_with_unit",
        "unit_price",
        "status",
    ]
    # The date filter's choices (today, past 7 days, this month, this year) cost no query.
    # No date_hierarchy: its year links run SELECT DISTINCT date_trunc('year', created_at)
    # over the whole table on every page (2.2 s at 10M events).
    list_filter = ["organization", EventNameFilter, "status", "created_at"]
    search_fields = ["request_id"]
    list_select_related = ["organization"]
    ordering = ["-created_at"]
    show_full_result_count = False  # no COUNT(*) over the whole table on each page

    def get_readonly_fields(self, request, obj=None):
        names = [field.name for field in self.model._meta.fields]
        names[names.index("quantity") + 1 : names.index("quantity") + 1] = ["amount"]
        names[names.index("dimensions")] = "dimensions_table"
        return names

    def get_fields(self, request, obj=None):
        return self.get_readonly_fields(request, obj)

    @admin.display(description="Quantity", ordering="quantity")
    def quantity_with_unit(self, obj) -> str:
        """``"3 pages"``, ``"1 call"``, ``"0.5 byte"`` (no trailing zeros)."""
        return f"{format_quantity(obj.quantity)} {obj.unit}" + ("" if obj.quantity == 1 else "s")

    @admin.display(description="Price", ordering="unit_cost_cents")
    def unit_price(self, obj) -> str:
        """The price per unit in currency (``"$0.01"``), ``"-"`` if the event is free."""
        return format_cents(obj.unit_cost_cents)

    @admin.display(description="Amount")
    def amount(self, obj) -> str:
        """``quantity * unit_cost_cents``, rounded once half-up, in currency."""
        if obj.unit_cost_cents is None:
            return "-"
        return format_cents(line_cost_cents(obj.quantity * obj.unit_cost_cents))

    @admin.display(description="Dimensions")
    def dimensions_table(self, obj):
        """``dimensions`` as an HTML key/value table (keys sorted); nested values as JSON."""
        if not obj.dimensions:
            return "-"
        rows = format_html_join(
            "",
            "<tr><th scope='row'>{}</th><td>{}</td></tr>",
            (
                (key, value if isinstance(value, str) else json.dumps(value))
                for key, value in sorted(obj.dimensions.items())
            ),
        )
        return format_html("<table class='dimensions'><tbody>{}</tbody></table>", rows)


@admin.register(UsageAggregate)
class UsageAggregateAdmin(ReadOnlyModelAdmin):
    """The Stripe outbox, read-only row by row. Actions (they need the change permission):

    * ``retry_failed``: queue failed aggregates again, only while their first send is
      within ``STRIPE_RESEND_WINDOW_HOURS`` (Stripe deduplicates an identifier and
      replays an idempotency key for about 24 hours only); older ones are refused.
    * ``reconciled_stripe_has_it`` / ``reconciled_stripe_lacks_it``: close a
      reconciliation (status ``needs_reconciliation``, or ``failed`` past the window)
      after checking Stripe's meter event summaries
      (``reconciliation.reconciliation_resolve``).
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
        (``reconciliation.aggregates_requeue_failed``: ``pending``, attempts 0, same identifier) for
        the next ``report_usage`` run; those first sent before
        ``reconciliation.resend_cutoff()`` are refused (Stripe deduplicates an identifier
        for about 24 hours only: reconcile them against Stripe's meter event summaries
        instead). The messages say what was queued and what refused."""
        count, refused = reconciliation.aggregates_requeue_failed(aggregates=queryset)
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
            reconciliation.reconciliation_resolve(
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
class MeterReportAdmin(ReadOnlyModelAdmin):
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
    """``tenancy.admin.OrganizationAdmin`` plus usage: a "Usage this period" column on the
    list (each organization's current month in its billing time zone, in currency; at
    most two GROUP BY queries per page, see ``get_changelist_instance``) and, on the
    change page, this month's lines and daily chart (read-only)."""

    list_display = [*OrganizationAdmin.list_display, "usage_this_period"]
    readonly_fields = [*OrganizationAdmin.readonly_fields, "current_period_usage"]

    def get_changelist_instance(self, request):
        """The changelist, its page's organizations carrying ``_usage_cents``: their usage
        this period in cents, read by one ``usage_by_organization`` per distinct current
        month among them (two at most: at a month's turn time zones disagree)."""
        changelist = super().get_changelist_instance(request)
        page = list(changelist.result_list)  # evaluated once; the template reuses it
        by_month: dict = {}
        for organization in page:
            by_month.setdefault(month_period(organization)[0].date(), []).append(organization)
        for month, organizations in by_month.items():
            totals = {
                row["organization_id"]: row["cost_cents"]
                for row in usage_by_organization(month=month, organizations=organizations)
            }
            for organization in organizations:
                organization._usage_cents = totals.get(organization.pk, 0)
        return changelist

    @admin.display(description="Usage this period")
    def usage_this_period(self, obj) -> str:
        """This month's amount (billing time zone) in currency, e.g. ``"$1,234.56"``."""
        cents = getattr(obj, "_usage_cents", None)
        if cents is None:  # not from the changelist: read it alone
            month = month_period(obj)[0].date()
            rows = usage_by_organization(month=month, organizations=[obj])
            cents = rows[0]["cost_cents"] if rows else 0
        return format_cents(cents)

    @admin.display(description="Current period usage")
    def current_period_usage(self, obj):
        """This calendar month (billing time zone): per event name its events, quantity and
        amount, the total, and the daily chart, as HTML; ``"-"`` on the add page."""
        if obj is None or obj.pk is None:
            return "-"
        start, end = month_period(obj)
        with tenant_context(obj):  # staff's one explicit cross-tenant read (RLS applies)
            lines = usage_summary(organization=obj, start=start, end=end)
        days = usage_by_day(month=start.date(), organization=obj)
        chart = daily_bar_chart(days, month=start.date(), label=f"{obj.name}, {start:%B %Y}")
        return render_to_string(
            "admin/billing/organization_usage.html",
            {
                "start": start,
                "last_day": end - timedelta(days=1),
                "zone": str(start.tzinfo),
                "lines": lines,
                "total_cents": sum(line["cost_cents"] for line in lines),
                "chart": chart,
                "dashboard_url": reverse("admin-usage")
                + "?"
                + urlencode({"month": f"{start:%Y-%m}", "organization": obj.pk}),
            },
        )
