"""Billing events: the metered usage of each organization (see DESIGN.md, Billing events)."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from uuid6 import uuid7

from tenancy.models import Organization, TenantModel


class BillingEventStatus(models.IntegerChoices):
    """``BillingEvent.status`` (a ``smallint``): ``0`` pending (not yet reported to the
    payment provider), ``1`` posted (its usage aggregate was acknowledged by Stripe; see
    ``billing.reporting``). The API shows the label; the events filter takes either."""

    PENDING = 0, "pending"
    POSTED = 1, "posted"


class BillingEvent(TenantModel):
    """One metered unit of usage: a billable API request, an uploaded or processed document.

    ``quantity`` is a decimal count of ``unit`` (``call``, ``document``, ``byte``,
    ``page``); ``unit_cost_cents`` is the integer price per unit in cents fixed
    at write time; ``created_at`` is UTC. Unique on (organization, event_name,
    request_id) when ``request_id`` is set, so a retried request is billed once.

    ``id`` is a UUIDv7 (RFC 9562, section 5.7: a millisecond Unix timestamp first), so
    new rows land at the right edge of the primary-key index instead of on random
    pages of a table that grows by millions of rows a month.
    """

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # No single-column indexes on the two foreign keys: the composite indexes below
    # lead with the same columns and serve the same lookups (PostgreSQL manual, 11.3
    # "Multicolumn Indexes"), and every index is paid on each of millions of inserts.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="billing_events", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="billing_events",
        db_index=False,
    )
    event_type = models.CharField(max_length=40)
    event_name = models.CharField(max_length=64)
    resource_id = models.UUIDField(null=True, blank=True)
    request_id = models.CharField(max_length=128, null=True, blank=True)
    quantity = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("1"))
    unit = models.CharField(max_length=16, default="call")
    unit_cost_cents = models.IntegerField(null=True, blank=True)
    dimensions = models.JSONField(default=dict, blank=True)
    status = models.SmallIntegerField(
        choices=BillingEventStatus.choices, default=BillingEventStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    usage_aggregate = models.ForeignKey(
        "billing.UsageAggregate",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="events",
        help_text="The Stripe outbox aggregate this event was reported in.",
    )

    class Meta:
        db_table = "billing_events"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "event_name", "request_id"],
                condition=Q(request_id__isnull=False),
                name="billing_event_org_name_request_unique",
            )
        ]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="billing_ev_org_created_idx"),
            models.Index(fields=["event_name"], name="billing_ev_name_idx"),
            models.Index(fields=["user", "created_at"], name="billing_ev_user_created_idx"),
            # Events by status, oldest first: the reporter's pending queue and the
            # billing health endpoint (pending count, oldest pending, newest posted).
            models.Index(fields=["status", "created_at"], name="billing_ev_status_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} x{self.quantity} ({self.organization_id})"


class MeterReportStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    PARTIAL = "partial", "partial (some aggregates failed)"
    FAILED = "failed", "failed"
    DRY_RUN = "dry_run", "dry run (nothing sent)"
    SKIPPED = "skipped", "skipped (no Stripe customer)"


class MeterReport(TenantModel):
    """One run of usage reporting to Stripe meters for one organization (command or API).

    ``until`` is the exclusive end (UTC) of the events it covers; counts say what it
    did. The outbox rows it created or sent are ``UsageAggregate``s.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="meter_reports"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(
        max_length=16, choices=MeterReportStatus.choices, default=MeterReportStatus.QUEUED
    )
    dry_run = models.BooleanField(default=False)
    until = models.DateTimeField(help_text="Exclusive end (UTC) of the events covered.")
    aggregates_created = models.IntegerField(default=0)
    aggregates_sent = models.IntegerField(default=0)
    aggregates_failed = models.IntegerField(default=0)
    events_posted = models.IntegerField(default=0)
    detail = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"], name="meter_report_org_idx")]

    def __str__(self) -> str:
        return f"usage report {self.id} ({self.status})"


class UsageAggregateStatus(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent (acknowledged by Stripe)"
    FAILED = "failed", "failed (retries exhausted)"


class UsageAggregate(TenantModel):
    """The outbox: one Stripe meter event to send, for (organization, meter, UTC hour, sequence).

    ``identifier`` (also the ``Idempotency-Key``) is derived from those four, so a
    resend of the same aggregate can never count twice at Stripe, while events that
    arrive late for an hour already reported go into the next ``sequence``. ``value``
    is the summed quantity (decimal). Events point at their aggregate
    (``BillingEvent.usage_aggregate``) and become posted only when it is ``sent``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_aggregates"
    )
    report = models.ForeignKey(
        MeterReport, null=True, blank=True, on_delete=models.SET_NULL, related_name="aggregates"
    )
    event_name = models.CharField(max_length=64)
    meter_event_name = models.CharField(max_length=100)
    period_start = models.DateTimeField(help_text="Start of the UTC hour aggregated.")
    sequence = models.PositiveSmallIntegerField(default=1)
    value = models.DecimalField(max_digits=28, decimal_places=4)
    event_count = models.IntegerField(default=0)
    identifier = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=UsageAggregateStatus.choices, default=UsageAggregateStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["period_start", "meter_event_name", "sequence"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "meter_event_name", "period_start", "sequence"],
                name="usage_aggregate_org_meter_hour_seq_unique",
            ),
            models.UniqueConstraint(
                fields=["organization", "identifier"], name="usage_aggregate_org_identifier_unique"
            ),
        ]
        indexes = [models.Index(fields=["organization", "status"], name="usage_agg_org_status_idx")]

    def __str__(self) -> str:
        return self.identifier
