"""Identifiers and values of Stripe meter events: the reported hour, the identifier of an
aggregate, and its value as Stripe accepts it.

Stripe's limits (Stripe docs, "Record usage for billing with the API"):
the timestamp may be at most 35 days old (``STRIPE_MAX_AGE``) and not in the future (only
complete hours before ``until`` <= now are reported, ``current_hour``), and the value is a
decimal with at most 15 significant digits (``MAX_SIGNIFICANT_DIGITS``; Stripe answers a 400
for more since API version 2026-04-22, changelog "billing meter event values validation").
Events are never rounded: a larger hour is split instead (``billing.reporting.outbox``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

STRIPE_MAX_AGE = timedelta(days=35)
MAX_SIGNIFICANT_DIGITS = 15


def current_hour(now: datetime | None = None) -> datetime:
    """The start of the current UTC hour: the default ``until`` (only complete hours)."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


def aggregate_identifier(organization_id, meter: str, period_start: datetime, sequence: int) -> str:
    """``gl-<org>-<meter>-<YYYYMMDDTHH>-<seq>``, at most 100 characters (Stripe's limit).

    The same inputs always give the same identifier; a long meter name is replaced by
    a hash so the identifier stays unique and short.
    """
    meter_part = meter if len(meter) <= 30 else hashlib.sha256(meter.encode()).hexdigest()[:16]
    hour = period_start.astimezone(UTC).strftime("%Y%m%dT%H")
    return f"gl-{organization_id}-{meter_part}-{hour}-{sequence}"


def value_fits(value: Decimal) -> bool:
    """True when ``value`` has at most 15 significant digits (trailing zeros do not count)."""
    return len(value.normalize().as_tuple().digits) <= MAX_SIGNIFICANT_DIGITS


def format_value(value: Decimal) -> str:
    """The meter event value as Stripe expects it: a plain decimal string.

    Raises:
        ValueError: more than 15 significant digits (Stripe's limit).
    """
    normalized = value.normalize()
    if not value_fits(normalized):
        digits = len(normalized.as_tuple().digits)
        raise ValueError(f"value {value} has {digits} significant digits (Stripe allows 15)")
    return format(normalized, "f")
