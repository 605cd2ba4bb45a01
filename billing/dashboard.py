"""The staff usage dashboard at ``/admin/usage/``: a month of usage across organizations.

Staff only (the admin's ``admin_view``: active staff, else the login page) and only with
the ``billing.view_billingevent`` permission (else 403). It runs on the admin's
cross-tenant path (``tenancy.middleware.AdminCrossTenantMiddleware``), like every admin
page. All reads go through ``billing.selectors``: a constant number of GROUP BY queries
whatever the number of organizations or events.

Query parameters (all optional; a bad value is shown as a form error and the default is
used): ``month`` (``YYYY-MM``, one of the last ``MONTHS_BACK`` months; default: the
current month, UTC), ``organization`` (UUID: also chart that organization and show its
top routes), ``o`` (the table's sort: ``name``, ``count``, ``quantity``, ``amount``,
``plan`` or ``subscription``, ``-`` first for descending; default ``-amount``).
"""

from datetime import date, timedelta

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import urlencode

from billing import selectors
from billing.charts import daily_bar_chart
from billing.models import UsageAggregateStatus
from tenancy.models import PlanTier
from tenancy.selectors import organization_by_id

#: How many months (the current one included) the period picker offers.
MONTHS_BACK = 24

#: Sortable columns of the organization table: parameter -> row key.
SORT_KEYS = {
    "name": "name",
    "count": "count",
    "quantity": "quantity",
    "amount": "cost_cents",
    "plan": "plan_tier",
    "subscription": "subscription_status",
}
DEFAULT_SORT = "-amount"


def month_choices(today: date) -> list[tuple[str, str]]:
    """``[("YYYY-MM", "November 2026"), ...]``: the ``MONTHS_BACK`` months up to
    ``today``'s, newest first."""
    choices, month = [], selectors.month_start(today)
    for _ in range(MONTHS_BACK):
        choices.append((f"{month:%Y-%m}", f"{month:%B %Y}"))
        month = selectors.month_start(month - timedelta(days=1))
    return choices


class PeriodForm(forms.Form):
    """The dashboard's GET parameters (see the module docstring)."""

    month = forms.ChoiceField(required=False, label="Month")
    organization = forms.UUIDField(required=False, widget=forms.HiddenInput)
    o = forms.ChoiceField(
        required=False,
        widget=forms.HiddenInput,
        choices=[(f"{sign}{key}", key) for key in SORT_KEYS for sign in ("", "-")],
    )

    def __init__(self, *args, today: date, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["month"].choices = month_choices(today)
        self.today = today

    def period(self) -> tuple[date, str]:
        """``(first day of the chosen month, sort)``; the defaults for what is invalid."""
        data = self.cleaned_data if self.is_valid() else {}
        chosen = data.get("month") or f"{self.today:%Y-%m}"
        year, month = (int(part) for part in chosen.split("-"))
        return date(year, month, 1), data.get("o") or DEFAULT_SORT


def _sorted(rows: list[dict], sort: str) -> list[dict]:
    key = SORT_KEYS[sort.lstrip("-")]
    # Name as the tie-breaker, in the same direction, so equal amounts keep a stable order.
    return sorted(rows, key=lambda row: (row[key], row["name"]), reverse=sort.startswith("-"))


def _changelist(model: str, **filters) -> str:
    return reverse(f"admin:{model}_changelist") + ("?" + urlencode(filters) if filters else "")


def _headers(month: date, organization, sort: str) -> list[dict]:
    """The table's column headers with their sort links (clicking twice reverses)."""
    headers = []
    for param, label in [
        ("name", "Organization"),
        ("plan", "Plan"),
        ("subscription", "Subscription"),
        ("count", "Events"),
        ("quantity", "Quantity"),
        ("amount", "Amount"),
    ]:
        current = sort.lstrip("-") == param
        descending = sort.startswith("-")
        target = param if current and descending else f"-{param}"
        query = {"month": f"{month:%Y-%m}", "o": target}
        if organization is not None:
            query["organization"] = organization.pk
        headers.append(
            {
                "label": label,
                "url": "?" + urlencode(query),
                "sorted": ("descending" if descending else "ascending") if current else "",
                "numeric": param in ("count", "quantity", "amount"),
            }
        )
    return headers


def _attention() -> list[dict]:
    """Counts, with changelist links, of what needs staff: failed and
    needs-reconciliation aggregates, and failed jobs when procrastinate is installed."""
    outbox = selectors.outbox_attention()
    items = [
        {
            "label": "Failed usage aggregates",
            "count": outbox["failed"],
            "url": _changelist("billing_usageaggregate", status__exact=UsageAggregateStatus.FAILED),
        },
        {
            "label": "Aggregates needing reconciliation",
            "count": outbox["needs_reconciliation"],
            "url": _changelist(
                "billing_usageaggregate",
                status__exact=UsageAggregateStatus.NEEDS_RECONCILIATION,
            ),
        },
    ]
    failed_jobs = selectors.failed_job_count()
    if failed_jobs is not None:
        try:
            url = _changelist("procrastinate_procrastinatejob", status__exact="failed")
        except NoReverseMatch:
            url = ""
        items.append({"label": "Failed jobs", "count": failed_jobs, "url": url})
    return items


def usage_dashboard(request):
    """``GET /admin/usage/``: the dashboard page (HTML). Raises ``PermissionDenied`` (403)
    without ``billing.view_billingevent``, ``Http404`` for an unknown ``organization``."""
    if not request.user.has_perm("billing.view_billingevent"):
        raise PermissionDenied
    form = PeriodForm(request.GET or None, today=timezone.now().date())
    month, sort = form.period()
    organization = None
    if form.is_bound and form.is_valid() and form.cleaned_data.get("organization"):
        organization = organization_by_id(organization_id=form.cleaned_data["organization"])
        if organization is None:
            raise Http404("No such organization.")
    rows = selectors.usage_by_organization(month=month)
    plans = dict(PlanTier.choices)
    for row in rows:
        row["plan"] = plans.get(row["plan_tier"], row["plan_tier"])
        row["chart_url"] = "?" + urlencode(
            {"month": f"{month:%Y-%m}", "o": sort, "organization": row["organization_id"]}
        )
        row["admin_url"] = reverse(
            "admin:tenancy_organization_change", args=[row["organization_id"]]
        )
    label = f"{month:%B %Y}"
    charts = [
        daily_bar_chart(
            selectors.usage_by_day(month=month),
            month=month,
            label=f"All organizations, {label}",
        )
    ]
    if organization is not None:
        charts.append(
            daily_bar_chart(
                selectors.usage_by_day(month=month, organization=organization),
                month=month,
                label=f"{organization.name}, {label}",
            )
        )
    context = {
        **admin.site.each_context(request),
        "title": f"Usage: {label}",
        "form": form,
        "month": month,
        "month_label": label,
        "organization": organization,
        "all_url": "?" + urlencode({"month": f"{month:%Y-%m}", "o": sort}),
        "rows": _sorted(rows, sort),
        "headers": _headers(month, organization, sort),
        "totals": {
            "organizations": len(rows),
            "count": sum(row["count"] for row in rows),
            "cost_cents": sum(row["cost_cents"] for row in rows),
        },
        "charts": charts,
        "routes": selectors.top_routes(month=month, organization=organization),
        "attention": _attention(),
        "events_url": _changelist("billing_billingevent"),
    }
    return TemplateResponse(request, "admin/billing/usage_dashboard.html", context)
