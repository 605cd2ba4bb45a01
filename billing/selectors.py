"""Reads of billing events: event lists, usage summaries and reports, pipeline health.

Periods are half-open ``[start, end)`` of aware datetimes (stored and compared in
UTC). The default period is the current calendar month in the organization's
``billing_timezone`` (IANA name, ``zoneinfo``). Money is integer cents: a line's
cost is ``sum(quantity * unit_cost_cents)`` summed exactly by PostgreSQL
(``numeric``) and rounded once, half-up, by ``billing.pricing.line_cost_cents``.

Every summary/report is ONE query over the ``(organization_id, created_at)``
index ``billing_ev_org_created_idx`` (see
``billing/tests/test_apis.py::test_summary_and_report_use_the_organization_created_at_index``,
which EXPLAINs the exact SQL of ``usage_summary`` and of ``usage_report`` for each
``group_by`` on 6,000 analysed rows and asserts that index, and no other, is used).
"""

import uuid
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import Count, DecimalField, ExpressionWrapper, F, Min, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.pricing import line_cost_cents

GROUP_BY_CHOICES = ("day", "route", "user")

_LINE_COST = ExpressionWrapper(
    F("quantity") * F("unit_cost_cents"),
    output_field=DecimalField(max_digits=24, decimal_places=4),
)


def billing_zone(organization) -> ZoneInfo:
    """The organization's billing time zone; UTC if its name is unknown to zoneinfo."""
    try:
        return ZoneInfo(organization.billing_timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def month_period(organization, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The calendar month containing ``now`` (default: now) in the organization's billing
    time zone, as aware datetimes ``[first day 00:00, next month's first day 00:00)``."""
    zone = billing_zone(organization)
    local = (now or timezone.now()).astimezone(zone)
    start = datetime.combine(local.date().replace(day=1), time.min, tzinfo=zone)
    next_month = (start.date() + timedelta(days=32)).replace(day=1)
    return start, datetime.combine(next_month, time.min, tzinfo=zone)


def parse_period_bound(value: str, organization) -> datetime:
    """Parse a period bound: ``YYYY-MM-DD`` (midnight in the billing time zone) or an
    ISO 8601 datetime (naive = billing time zone). Raises ``ValueError`` if neither."""
    zone = billing_zone(organization)
    value = value.strip()
    if len(value) == 10:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=zone)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def event_list(
    *,
    organization,
    event_name: str | None = None,
    status: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[BillingEvent]:
    """Events of ``organization``, newest first, optionally filtered (``[start, end)``)."""
    queryset = BillingEvent.objects.for_organization(organization)
    if event_name:
        queryset = queryset.filter(event_name=event_name)
    if status is not None:
        queryset = queryset.filter(status=status)
    if start is not None:
        queryset = queryset.filter(created_at__gte=start)
    if end is not None:
        queryset = queryset.filter(created_at__lt=end)
    return queryset.order_by("-created_at", "-id")


def event_resource_id(*, organization, event_name: str, request_id: str) -> uuid.UUID | None:
    """The ``resource_id`` of ``organization``'s event ``event_name`` with ``request_id``
    (e.g. the document a ``doc.upload`` created), or ``None`` if there is no such event or
    it has no resource. At most one event matches: (organization, event_name, request_id)
    is unique when ``request_id`` is set; one index lookup of that constraint."""
    return (
        BillingEvent.objects.filter(
            organization_id=organization.pk, event_name=event_name, request_id=request_id
        )
        .values_list("resource_id", flat=True)
        .first()
    )


def _period_events(organization, start: datetime, end: datetime) -> QuerySet[BillingEvent]:
    return BillingEvent.objects.filter(
        organization_id=organization.pk, created_at__gte=start, created_at__lt=end
    )


def _line(row: dict) -> dict:
    row["quantity"] = row.pop("total_quantity")
    row["cost_cents"] = line_cost_cents(row.pop("exact_cost"))
    return row


def usage_summary(*, organization, start: datetime, end: datetime) -> list[dict]:
    """Totals per event name for ``[start, end)``, one query.

    Returns:
        ``[{"event_name": str, "count": int, "quantity": Decimal, "cost_cents": int}]``
        sorted by event_name; ``cost_cents`` rounded once, half-up, per line.
    """
    rows = (
        _period_events(organization, start, end)
        .values("event_name")
        .annotate(count=Count("id"), total_quantity=Sum("quantity"), exact_cost=Sum(_LINE_COST))
        .order_by("event_name")
    )
    return [_line(row) for row in rows]


def usage_report(*, organization, start: datetime, end: datetime, group_by: str) -> list[dict]:
    """Breakdown of ``[start, end)`` by ``group_by`` and event name, one query.

    ``group_by``: ``day`` (calendar day in the billing time zone, ``"YYYY-MM-DD"``),
    ``route`` (the ``dimensions.route`` URL pattern; ``None`` for domain events) or
    ``user`` (``user_id`` and ``user_email``; ``None`` when the event had no user).

    Returns:
        ``[{<group key(s)>, "event_name", "count", "quantity", "cost_cents"}]``, sorted
        by the group key then event name.
    Raises:
        ValueError: ``group_by`` is not one of ``GROUP_BY_CHOICES``.
    """
    events = _period_events(organization, start, end)
    if group_by == "day":
        events = events.annotate(day=TruncDate("created_at", tzinfo=billing_zone(organization)))
        keys = ["day"]
    elif group_by == "route":
        events = events.annotate(route=KT("dimensions__route"))
        keys = ["route"]
    elif group_by == "user":
        events = events.annotate(user_email=F("user__email"))
        keys = ["user_id", "user_email"]
    else:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY_CHOICES)}")
    rows = (
        events.values(*keys, "event_name")
        .annotate(count=Count("id"), total_quantity=Sum("quantity"), exact_cost=Sum(_LINE_COST))
        .order_by(*keys, "event_name")
    )
    result = []
    for row in rows:
        if group_by == "day":
            row["day"] = row["day"].isoformat()
        result.append(_line(row))
    return result


def pipeline_health(*, organization=None, now: datetime | None = None) -> dict:
    """Billing pipeline health of ``organization`` (or of ALL organizations when ``None``,
    the operators' view). Four queries: two index scans of
    ``billing_ev_status_created_idx``, the newest finished report, and one pass over the
    outbox counting its statuses (filtered ``COUNT``s, PostgreSQL's ``FILTER`` clause).

    Returns:
        ``{"pending_count": int, "oldest_pending_at": datetime | None,
        "oldest_pending_age_seconds": float | None, "last_posted_event_at": datetime | None}``.
        ``last_posted_event_at`` is the creation time of the newest event already
        posted to the payment provider (the last report covered events up to it);
        also ``last_report_at`` (the newest finished Stripe report run),
        ``failed_aggregates`` (outbox rows whose retries are exhausted),
        ``unsent_aggregates`` (outbox rows still to send) and
        ``reconciliation_aggregates`` (outbox rows first sent too long ago to resend
        safely: to reconcile with Stripe by hand, see
        ``billing.reporting.reconciliation``).
    """
    now = now or timezone.now()
    events = BillingEvent.objects.all()
    if organization is not None:
        events = events.for_organization(organization)
    pending = events.filter(status=BillingEventStatus.PENDING).aggregate(
        pending_count=Count("id"), oldest_pending_at=Min("created_at")
    )
    last_posted = (
        events.filter(status=BillingEventStatus.POSTED)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    oldest = pending["oldest_pending_at"]
    reports = MeterReport.objects.all()
    aggregates = UsageAggregate.objects.all()
    if organization is not None:
        reports = reports.for_organization(organization)
        aggregates = aggregates.for_organization(organization)
    last_report = (
        reports.exclude(finished_at=None).order_by("-finished_at").values("finished_at").first()
    )
    unfinished = [
        UsageAggregateStatus.FAILED,
        UsageAggregateStatus.PENDING,
        UsageAggregateStatus.NEEDS_RECONCILIATION,
    ]
    outbox = aggregates.filter(status__in=unfinished).aggregate(
        failed=Count("pk", filter=Q(status=UsageAggregateStatus.FAILED)),
        unsent=Count("pk", filter=Q(status=UsageAggregateStatus.PENDING)),
        reconciliation=Count("pk", filter=Q(status=UsageAggregateStatus.NEEDS_RECONCILIATION)),
    )
    return {
        "pending_count": pending["pending_count"],
        "oldest_pending_at": oldest,
        "oldest_pending_age_seconds": (now - oldest).total_seconds() if oldest else None,
        "last_posted_event_at": last_posted,
        "last_report_at": last_report["finished_at"] if last_report else None,
        "failed_aggregates": outbox["failed"],
        "unsent_aggregates": outbox["unsent"],
        "reconciliation_aggregates": outbox["reconciliation"],
    }
