"""Reads of billing events: event lists, billing periods, pipeline health, the staff
usage dashboard. The usage summary, report and upcoming invoice (amounts from the plans'
rating) are in ``billing.usage``.

Periods are half-open ``[start, end)`` of aware datetimes (stored and compared in
UTC). The default period is the current calendar month in the organization's
``billing_timezone`` (IANA name, ``zoneinfo``). Money is integer cents: the staff
dashboard's cost is ``sum(quantity * unit_cost_cents)`` (the prices fixed on the events)
summed exactly by PostgreSQL (``numeric``) and rounded once, half-up, by
``billing.pricing.line_cost_cents``.
"""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import (
    Case,
    CharField,
    Count,
    DateField,
    DateTimeField,
    DecimalField,
    ExpressionWrapper,
    F,
    Func,
    Min,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.pricing import line_cost_cents
from tenancy.models import Organization

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


def _line(row: dict) -> dict:
    row["quantity"] = row.pop("total_quantity")
    row["cost_cents"] = line_cost_cents(row.pop("exact_cost"))
    return row


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


# --- Staff usage across organizations (the admin's usage dashboard) ---------------------
# A "month" is a calendar month taken in EACH organization's billing time zone: an event
# belongs to month M of its organization when its local date (created_at at the
# organization's zone) falls in M. One GROUP BY per read; the UTC window one day wider
# than the month on each side (time zones span UTC-12 to UTC+14) keeps the scan to the
# month's rows. Callers outside a tenant context must be on the cross-tenant path
# (``tenancy.context.cross_tenant``; the admin is): under row-level security these read
# nothing otherwise.


def month_start(value: date) -> date:
    """The first day of ``value``'s month."""
    return value.replace(day=1)


def next_month(month: date) -> date:
    """The first day of the month after ``month`` (a first day)."""
    return (month + timedelta(days=32)).replace(day=1)


def _valid_zones() -> list[str]:
    """The organizations' billing time zone names that ``zoneinfo`` knows (one query)."""
    names = Organization.objects.order_by().values_list("billing_timezone", flat=True).distinct()
    valid = []
    for name in names:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        valid.append(name)
    return valid


def _month_events(month: date, organizations) -> QuerySet[BillingEvent]:
    """Events whose local date (organization's billing zone; UTC for an unknown zone, as
    ``billing_zone``) is in ``month``, annotated with that ``local_day`` (a ``date``).
    ``organizations``: ``None`` (all) or an iterable of organizations or ids."""
    zone = Case(
        When(
            organization__billing_timezone__in=_valid_zones(),
            then=F("organization__billing_timezone"),
        ),
        default=Value("UTC"),
        output_field=CharField(),
    )
    local_day = Cast(
        Func(zone, F("created_at"), function="timezone", output_field=DateTimeField()),
        DateField(),
    )
    start = datetime.combine(month, time.min, tzinfo=ZoneInfo("UTC")) - timedelta(days=1)
    end = datetime.combine(next_month(month), time.min, tzinfo=ZoneInfo("UTC")) + timedelta(days=1)
    events = BillingEvent.objects.filter(created_at__gte=start, created_at__lt=end)
    if organizations is not None:
        events = events.filter(organization_id__in=[getattr(o, "pk", o) for o in organizations])
    return events.annotate(local_day=local_day).filter(
        local_day__gte=month, local_day__lt=next_month(month)
    )


_TOTALS = {"count": Count("id"), "total_quantity": Sum("quantity"), "exact_cost": Sum(_LINE_COST)}


def usage_by_organization(*, month: date, organizations=None) -> list[dict]:
    """Usage of ``month`` (its first day, a ``date``) per organization, ONE query.

    ``organizations``: ``None`` for every organization with usage, or an iterable of
    organizations (or ids) to restrict to. An organization's ``cost_cents`` is the sum of
    its per-event-name lines, each rounded once half-up (as ``usage_summary``).

    Returns:
        ``[{"organization_id": UUID, "name": str, "slug": str, "plan_tier": str,
        "subscription_status": str (Stripe's, "" without a subscription), "count": int,
        "quantity": Decimal, "cost_cents": int}]`` ordered by name;
        organizations without usage in the month are not in it.
    """
    rows = (
        _month_events(month, organizations)
        .values(
            "organization_id",
            "event_name",
            name=F("organization__name"),
            slug=F("organization__slug"),
            plan_tier=F("organization__plan_tier"),
            subscription_status=F("organization__subscription_status"),
        )
        .annotate(**_TOTALS)
        .order_by()
    )
    result: dict = {}
    for row in rows:
        line = _line(row)
        total = result.setdefault(
            line["organization_id"],
            {
                "organization_id": line["organization_id"],
                "name": line["name"],
                "slug": line["slug"],
                "plan_tier": line["plan_tier"],
                "subscription_status": line["subscription_status"],
                "count": 0,
                "quantity": 0,
                "cost_cents": 0,
            },
        )
        for key in ("count", "quantity", "cost_cents"):
            total[key] += line[key]
    return sorted(result.values(), key=lambda row: (row["name"], str(row["organization_id"])))


def usage_by_day(*, month: date, organization=None) -> list[dict]:
    """Daily usage of ``month`` (its first day) of ``organization`` or, when ``None``, of
    every organization (each day is the organizations' local day), ONE query.

    Returns:
        ``[{"day": date, "count": int, "quantity": Decimal, "cost_cents": int}]`` for the
        days with usage, in day order; a day's cost is rounded once, half-up.
    """
    organizations = None if organization is None else [organization]
    rows = (
        _month_events(month, organizations)
        .values(day=F("local_day"))
        .annotate(**_TOTALS)
        .order_by("day")
    )
    return [_line(row) for row in rows]


def top_routes(*, month: date, organization=None, limit: int = 10) -> list[dict]:
    """The ``limit`` routes (``dimensions.route`` URL patterns) with the most events in
    ``month`` (its first day), of ``organization`` or of all, ONE query.

    Returns:
        ``[{"route": str, "count": int, "quantity": Decimal, "cost_cents": int}]``,
        most events first (ties by route).
    """
    organizations = None if organization is None else [organization]
    rows = (
        _month_events(month, organizations)
        .annotate(route=KT("dimensions__route"))
        .filter(route__isnull=False)
        .values("route")
        .annotate(**_TOTALS)
        .order_by("-count", "route")[:limit]
    )
    return [_line(row) for row in rows]


def outbox_attention() -> dict:
    """Outbox rows of every organization that need staff: ONE query.

    Returns:
        ``{"failed": int, "needs_reconciliation": int}`` (``UsageAggregate`` counts by
        status; see ``UsageAggregateStatus``).
    """
    return UsageAggregate.objects.filter(
        status__in=[UsageAggregateStatus.FAILED, UsageAggregateStatus.NEEDS_RECONCILIATION]
    ).aggregate(
        failed=Count("pk", filter=Q(status=UsageAggregateStatus.FAILED)),
        needs_reconciliation=Count(
            "pk", filter=Q(status=UsageAggregateStatus.NEEDS_RECONCILIATION)
        ),
    )


def failed_job_count() -> int | None:
    """Failed background jobs (procrastinate's ``procrastinate_jobs`` with status
    ``failed``), ONE query; ``None`` when procrastinate's Django app is not installed."""
    from django.apps import apps

    if not apps.is_installed("procrastinate.contrib.django"):
        return None
    from procrastinate.contrib.django.models import ProcrastinateJob

    return ProcrastinateJob.objects.filter(status="failed").count()


def organizations_with_pending_usage(*, meters: list[str], before: datetime) -> QuerySet:
    """The organizations the hourly usage report has work for, by slug: those with a Stripe
    customer (``stripe_customer_id`` set; without one a report could only be ``skipped``)
    and either pending billing events not in an outbox row yet, of an event name in
    ``meters`` (``STRIPE_METERS``' keys), created before ``before`` (UTC; the report covers
    complete hours only), or outbox rows still to send (``pending`` aggregates). An
    ``Organization`` queryset; ONE query (two ``IN`` subqueries).

    Cross-organization by nature: the caller reads through the explicit cross-tenant path
    (``tenancy.context.cross_tenant``), the billing tables being tenant tables."""
    from tenancy.models import Organization

    events = BillingEvent.objects.filter(
        status=BillingEventStatus.PENDING,
        usage_aggregate__isnull=True,
        event_name__in=meters,
        created_at__lt=before,
    ).values("organization_id")
    unsent = UsageAggregate.objects.filter(status=UsageAggregateStatus.PENDING).values(
        "organization_id"
    )
    return (
        Organization.objects.exclude(stripe_customer_id="")
        .filter(Q(pk__in=events) | Q(pk__in=unsent))
        .order_by("slug")
    )
