"""Reconciliation: the usage recorded here against Stripe's meter event summaries.

For one month (the organization's billing time zone, ``billing.selectors``) and each meter
of ``settings.STRIPE_METERS``, the local quantity (the sum of the organization's billing
events of that event name) is compared with the ``aggregated_value`` Stripe reports for
the customer (``GET /v1/billing/meters/{id}/event_summaries``, Stripe API reference, "List
billing meter event summaries"; the meter found by its ``event_name`` in ``GET
/v1/billing/meters``).

Usage reaches Stripe as one meter event per UTC hour stamped with the hour's start
(``billing.reporting``), so Stripe counts an hour inside ``[start, end)`` when its start
is. Both sides are therefore taken over the hours whose start lies in the period: Stripe's
``[start, end)`` (minute-aligned, as it requires), and the local events created in
``[ceil_hour(start), ceil_hour(end))``; for every zone with whole-hour offsets these are the
period's own bounds. Events not yet reported (``pending``) are part of the local figure and
shown beside a difference, which they may explain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Q, Sum
from django.utils import timezone

from billing.models import BillingEvent, BillingEventStatus
from billing.selectors import billing_zone, next_month
from billing.stripe_sync.models import UsageReconciliation
from tenancy.context import tenant_context

logger = logging.getLogger(__name__)


def ceil_hour(value: datetime) -> datetime:
    """The first whole UTC hour at or after ``value``."""
    value = value.astimezone(UTC)
    floor = value.replace(minute=0, second=0, microsecond=0)
    return floor if floor == value else floor + timedelta(hours=1)


def month_bounds(organization, month: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``month`` (its first day) in the organization's billing time
    zone, as aware datetimes."""
    zone = billing_zone(organization)
    start = datetime(month.year, month.month, 1, tzinfo=zone)
    end_day = next_month(month)
    return start, datetime(end_day.year, end_day.month, 1, tzinfo=zone)


@dataclass(frozen=True)
class Difference:
    """One organization and meter where the two sides disagree (decimal quantities)."""

    organization: str
    meter: str
    stripe_meter: str
    local: Decimal
    stripe: Decimal
    pending_local: Decimal

    def line(self) -> str:
        """``slug meter: local X, Stripe Y (difference D; P not yet reported)``."""
        diff = self.local - self.stripe
        return (
            f"{self.organization} {self.meter} ({self.stripe_meter}): local {self.local}, "
            f"Stripe {self.stripe} (difference {diff:+}; {self.pending_local} not yet reported)"
        )

    def as_json(self) -> dict:
        """The row stored in ``UsageReconciliation.differences`` (decimals as strings)."""
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}


def local_usage(
    *, organization, start: datetime, end: datetime
) -> dict[str, tuple[Decimal, Decimal]]:
    """``{event name: (quantity, pending quantity)}`` of the organization's events of a
    metered event name created in ``[ceil_hour(start), ceil_hour(end))``."""
    with tenant_context(organization):
        rows = (
            BillingEvent.objects.for_organization(organization)
            .filter(
                created_at__gte=ceil_hour(start),
                created_at__lt=ceil_hour(end),
                event_name__in=list(settings.STRIPE_METERS),
            )
            .values("event_name")
            .annotate(
                total=Sum("quantity"),
                pending=Sum("quantity", filter=Q(status=BillingEventStatus.PENDING)),
            )
            .order_by("event_name")
        )
        return {
            r["event_name"]: (r["total"] or Decimal(0), r["pending"] or Decimal(0)) for r in rows
        }


def stripe_meter_ids(client) -> dict[str, str]:
    """``{meter event name: meter id}`` of every active Stripe meter."""
    meters = client.v1.billing.meters.list(params={"limit": 100, "status": "active"})
    return {meter.event_name: meter.id for meter in meters.auto_paging_iter()}


def stripe_usage(
    client, *, meter_id: str, customer: str, start: datetime, end: datetime
) -> Decimal:
    """The sum of ``aggregated_value`` of the customer's summaries of ``meter_id`` over
    ``[start, end)`` (Unix seconds, minute-aligned)."""
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id,
        params={
            "customer": customer,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
            "limit": 100,
        },
    )
    return sum((Decimal(str(s.aggregated_value)) for s in summaries.auto_paging_iter()), Decimal(0))


def usage_reconcile(
    *, month: date, organizations, client, say: Callable[[str], None], slug_filter: str = ""
) -> UsageReconciliation:
    """Compare every organization in ``organizations`` (those without a Stripe customer are
    skipped, with a line) for ``month``; ``say`` gets one line per organization and per
    difference. The run is stored as a ``UsageReconciliation`` (staff see it in the admin)
    and returned; ``ok`` is False when any difference was found or Stripe failed
    (``stripe.StripeError`` is caught, recorded in ``detail`` and re-raised)."""
    import stripe

    run = UsageReconciliation.objects.create(period=f"{month:%Y-%m}", organization_slug=slug_filter)
    differences: list[Difference] = []
    try:
        meter_ids = stripe_meter_ids(client)
        for organization in organizations:
            if not organization.stripe_customer_id:
                say(f"{organization.slug}: skipped (no Stripe customer)")
                continue
            start, end = month_bounds(organization, month)
            local = local_usage(organization=organization, start=start, end=end)
            found = []
            for event_name, meter in sorted(settings.STRIPE_METERS.items()):
                quantity, pending = local.get(event_name, (Decimal(0), Decimal(0)))
                if meter not in meter_ids:
                    remote = Decimal(0)
                else:
                    remote = stripe_usage(
                        client,
                        meter_id=meter_ids[meter],
                        customer=organization.stripe_customer_id,
                        start=start,
                        end=end,
                    )
                if quantity != remote:
                    found.append(
                        Difference(organization.slug, event_name, meter, quantity, remote, pending)
                    )
            run.organizations_checked += 1
            say(f"{organization.slug}: {len(found)} difference(s)")
            for difference in found:
                say(f"  {difference.line()}")
            differences.extend(found)
    except stripe.StripeError as exc:
        run.detail = f"Stripe failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        run.differences = [d.as_json() for d in differences]
        run.ok = not differences and not run.detail
        run.finished_at = timezone.now()
        run.save()
    return run
