"""Admin of the Stripe sync (registered by ``billing.admin``, which imports this module):
webhook events and reconciliation runs, read-only. Staff filter webhook events by "needs
attention" (Stripe rejected meter events; a customer that matches no organization)."""

import json

from django.contrib import admin
from django.utils.html import format_html

from billing.stripe_sync.models import StripeWebhookEvent, UsageReconciliation
from core.admin import ReadOnlyModelAdmin


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(ReadOnlyModelAdmin):
    """Stripe webhook events as received, their processing status and outcome."""

    list_display = [
        "received_at",
        "event_type",
        "status",
        "needs_attention",
        "matched_organization",
        "stripe_event_id",
    ]
    list_filter = ["needs_attention", "status", "event_type", "livemode"]
    search_fields = ["stripe_event_id", "event_type", "detail"]
    list_select_related = ["matched_organization"]
    date_hierarchy = "received_at"
    exclude = ["payload"]
    readonly_fields = ["payload_pretty"]

    @admin.display(description="Payload")
    def payload_pretty(self, obj) -> str:
        """The event's JSON body, indented, in a ``<pre>``."""
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))


@admin.register(UsageReconciliation)
class UsageReconciliationAdmin(ReadOnlyModelAdmin):
    """Runs of ``manage.py reconcile_usage``: the newest first; each lists its
    differences (organization, meter, local and Stripe quantities)."""

    list_display = [
        "started_at",
        "period",
        "organization_slug",
        "organizations_checked",
        "difference_count",
        "ok",
    ]
    list_filter = ["ok", "period"]
    exclude = ["differences"]
    readonly_fields = ["difference_lines"]

    @admin.display(description="Differences")
    def difference_count(self, obj) -> int:
        """How many (organization, meter) pairs disagreed."""
        return len(obj.differences or [])

    @admin.display(description="Differences")
    def difference_lines(self, obj) -> str:
        """One line per difference, in a ``<pre>``; "none" when the run found none."""
        lines = [
            f"{d['organization']} {d['meter']} ({d['stripe_meter']}): local {d['local']}, "
            f"Stripe {d['stripe']}, not yet reported {d['pending_local']}"
            for d in obj.differences or []
        ]
        return format_html("<pre>{}</pre>", "\n".join(lines) or "none")
