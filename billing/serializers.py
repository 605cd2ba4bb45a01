"""Serializers of the billing API (output shapes, and the period query parameters)."""

from datetime import timedelta

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from billing.ingest import EVENT_FIELDS
from billing.models import BillingEvent, MeterReport
from billing.selectors import billing_zone, parse_period_bound
from billing.usage import GROUP_BY_CHOICES
from core.filters import utc_instant


class BillingEventSerializer(serializers.ModelSerializer):
    """One event; ``status`` as text (``pending``/``posted``), ``quantity`` a decimal string."""

    status = serializers.CharField(source="get_status_display")

    class Meta:
        model = BillingEvent
        # The written columns (one list, from the model: billing.ingest.EVENT_FIELDS) but
        # the organization, which is the caller's own.
        fields = [f.name for f in EVENT_FIELDS if f.name != "organization"]
        read_only_fields = fields


class PeriodQuerySerializer(serializers.Serializer):
    """``start``/``end``: ``YYYY-MM-DD`` (midnight in the organization's billing time zone)
    or ISO 8601 datetimes; both optional (default: the current billing month)."""

    start = serializers.CharField(required=False, max_length=64)
    end = serializers.CharField(required=False, max_length=64)

    def _bound(self, value):
        """The bound as an aware ``datetime``; an offset PostgreSQL cannot take (over
        ±15:59, PostgreSQL manual 8.5.1.3) is moved to the billing time zone, the same
        instant. ``ValidationError`` for a malformed value or one outside years 1-9999."""
        organization = self.context["organization"]
        try:
            bound = parse_period_bound(value, organization)
            utc_instant(bound)  # ValueError: leaves Python's range in UTC
            if abs(bound.utcoffset()) >= timedelta(hours=16):
                bound = bound.astimezone(billing_zone(organization))
            return bound
        except (ValueError, OverflowError):  # OverflowError: into the billing time zone
            raise serializers.ValidationError(
                "Use YYYY-MM-DD or an ISO 8601 datetime (e.g. 2026-11-01T00:00:00Z)."
            ) from None

    def validate_start(self, value):
        return self._bound(value)

    def validate_end(self, value):
        return self._bound(value)

    def validate(self, attrs):
        if ("start" in attrs) != ("end" in attrs):
            raise serializers.ValidationError({"end": ["Give both start and end, or neither."]})
        if "start" in attrs and attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"end": ["end must be after start."]})
        return attrs


class ReportQuerySerializer(PeriodQuerySerializer):
    """The usage report's query: the period (``start``/``end``, see
    ``PeriodQuerySerializer``) and ``group_by``, one of ``day`` (calendar day in the
    billing time zone), ``route`` (URL pattern) or ``user``; default ``day``. An
    unknown ``group_by`` is a validation error (400)."""

    group_by = serializers.ChoiceField(choices=GROUP_BY_CHOICES, default="day")


class UsageLineSerializer(serializers.Serializer):
    """A summary line: events, total quantity (decimal string), the included (free) and
    billable part of it, and the cost in integer cents; ``pricing`` says where the cost
    comes from: ``plan`` (the plan's included units and tiers, ``billing.rating``) or
    ``event_price`` (an event name no plan prices: the price fixed on each event)."""

    event_name = serializers.CharField()
    count = serializers.IntegerField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=4)
    included = serializers.DecimalField(max_digits=24, decimal_places=4)
    billable = serializers.DecimalField(max_digits=24, decimal_places=4)
    cost_cents = serializers.IntegerField()
    pricing = serializers.ChoiceField(choices=["plan", "event_price"])


def _row_serializer(name: str, **keys) -> type[serializers.Serializer]:
    """A report row serializer: the group key fields first, then the line fields."""
    fields = {
        **keys,
        "event_name": serializers.CharField(),
        "count": serializers.IntegerField(),
        "quantity": serializers.DecimalField(max_digits=24, decimal_places=4),
        "cost_cents": serializers.IntegerField(),
    }
    return type(name, (serializers.Serializer,), fields)


DayRowSerializer = _row_serializer(
    "DayRowSerializer", day=serializers.CharField(help_text="YYYY-MM-DD, billing time zone")
)
RouteRowSerializer = _row_serializer(
    "RouteRowSerializer",
    route=serializers.CharField(allow_null=True, help_text="URL pattern; null: domain events"),
)
UserRowSerializer = _row_serializer(
    "UserRowSerializer",
    user_id=serializers.IntegerField(allow_null=True),
    user_email=serializers.CharField(allow_null=True),
)

#: The row shape of each ``group_by`` of the usage report.
REPORT_ROW_SERIALIZERS = {
    "day": DayRowSerializer,
    "route": RouteRowSerializer,
    "user": UserRowSerializer,
}


class UsagePeriodSerializer(serializers.Serializer):
    """The period part of the summary and report responses: ``organization`` (UUID),
    ``timezone`` (the organization's IANA billing time zone) and the half-open period
    ``[start, end)`` as UTC datetimes."""

    organization = serializers.UUIDField()
    timezone = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A month of usage",
            value={
                "organization": "0b5d1f2e-8c3a-4f7e-9a41-6d2c8e7b9f10",
                "timezone": "America/New_York",
                "start": "2026-11-01T04:00:00Z",
                "end": "2026-12-01T05:00:00Z",
                "lines": [
                    {
                        "event_name": "api.request",
                        "count": 12001,
                        "quantity": "12001.0000",
                        "included": "1000.0000",
                        "billable": "11001.0000",
                        "cost_cents": 5000,
                        "pricing": "plan",
                    },
                    {
                        "event_name": "doc.upload",
                        "count": 12,
                        "quantity": "12.0000",
                        "included": "0.0000",
                        "billable": "12.0000",
                        "cost_cents": 600,
                        "pricing": "plan",
                    },
                ],
                "total_cost_cents": 5600,
            },
            response_only=True,
        )
    ]
)
class UsageSummarySerializer(UsagePeriodSerializer):
    """``[start, end)`` (UTC), the billing time zone, one line per event name, the total."""

    lines = UsageLineSerializer(many=True)
    total_cost_cents = serializers.IntegerField()


class UsageReportSerializer(UsagePeriodSerializer):
    """Schema of the report; ``rows`` hold the keys of ``group_by`` (see the row serializers)."""

    group_by = serializers.ChoiceField(choices=GROUP_BY_CHOICES)
    rows = serializers.ListField(child=serializers.DictField())


class BillingHealthSerializer(serializers.Serializer):
    """Pipeline health; ``scope`` is ``organization`` or ``all`` (staff)."""

    scope = serializers.CharField()
    pending_count = serializers.IntegerField()
    oldest_pending_at = serializers.DateTimeField(allow_null=True)
    oldest_pending_age_seconds = serializers.FloatField(allow_null=True)
    last_posted_event_at = serializers.DateTimeField(allow_null=True)
    last_report_at = serializers.DateTimeField(allow_null=True)
    failed_aggregates = serializers.IntegerField()
    unsent_aggregates = serializers.IntegerField()
    reconciliation_aggregates = serializers.IntegerField()
    metering_write_failures = serializers.IntegerField()
    failed_jobs = serializers.IntegerField(
        help_text="Background jobs that failed for good (retries exhausted or a permanent error)."
    )
    waiting_jobs = serializers.IntegerField(help_text="Background jobs due now, not yet taken.")
    oldest_waiting_job_age_seconds = serializers.FloatField(
        allow_null=True,
        help_text="Seconds the oldest due job has waited; growing: no worker is taking jobs.",
    )


class MeterReportSerializer(serializers.ModelSerializer):
    """A usage-reporting run to Stripe (``report-usage/``): ``status`` is a
    ``MeterReportStatus`` value (``queued``, ``running``, ``succeeded``, ``partial``,
    ``failed``, ``dry_run``, ``skipped``) and ``detail`` says why a run failed or was
    skipped (no Stripe customer, another run held the organization's lock).
    ``created_at`` is when it was queued, ``started_at`` when its run began (``null``
    while queued), ``finished_at`` when it ended (UTC, ISO 8601)."""

    class Meta:
        model = MeterReport
        fields = [
            "id",
            "status",
            "dry_run",
            "until",
            "aggregates_created",
            "aggregates_sent",
            "aggregates_failed",
            "events_posted",
            "detail",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields
