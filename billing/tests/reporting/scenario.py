"""What the usage-reporting tests share: the reported hour ``HOUR`` (two days ago, a
complete UTC hour), events recorded in it, the identifier and the exact meter-event
request expected for an aggregate, report rows, and the key of a run's lock."""

from datetime import UTC, timedelta
from decimal import Decimal

from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus
from billing.reporting import identifiers, locks
from billing.services import event_record
from tenancy.context import tenant_context

HOUR = (
    (timezone.now() - timedelta(days=2)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
)


def add_events(org, specs):
    """``specs``: (event_name, hour offset from HOUR, minute, quantity)."""
    with tenant_context(org):
        for i, (name, hours, minute, quantity) in enumerate(specs):
            event_record(
                organization=org,
                event_name=name,
                quantity=Decimal(quantity),
                request_id=f"{name}-{hours}-{minute}-{i}-{timezone.now().timestamp()}",
                created_at=HOUR + timedelta(hours=hours, minutes=minute),
            )


def ident(org, meter, hours, seq=1):
    return identifiers.aggregate_identifier(org.pk, meter, HOUR + timedelta(hours=hours), seq)


def sent(org, meter, hours, value, *, seq=1, key=None):
    """The exact request expected for one meter event (``key``: the Idempotency-Key,
    by default the identifier)."""
    identifier = ident(org, meter, hours, seq)
    return {
        "event_name": meter,
        "identifier": identifier,
        "timestamp": int((HOUR + timedelta(hours=hours)).timestamp()),
        "customer": "cus_acme",
        "value": value,
        "idempotency_key": key or identifier,
    }


def make_report(org, *, status, age=timedelta(0), started=None):
    """A report created ``age`` ago; ``started`` (how long ago its run began) defaults to
    ``age`` for a ``running`` report and to never for any other."""
    if started is None and status == MeterReportStatus.RUNNING:
        started = age
    now = timezone.now()
    with tenant_context(org):
        return MeterReport.objects.create(
            organization=org,
            until=now,
            status=status,
            created_at=now - age,
            started_at=None if started is None else now - started,
        )


def lock_key(org) -> int:
    return locks.advisory_key(locks.RUN_LOCK, org.pk)
