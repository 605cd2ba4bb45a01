"""Billing events: the metered usage of each organization, and stored Idempotency-Key
answers (see docs/architecture.md, "Billing events")."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from uuid_utils.compat import uuid7

from tenancy.fields import TenantForeignKey
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
    request_id) when ``request_id`` is set: one event per key. An ``api.request`` event's
    ``request_id`` is the server's id of the request (never the client's ``X-Request-ID``,
    kept as ``dimensions.client_request_id``), so each request served is billed once;
    document events are keyed on the document (``doc.upload:<id>``, ``doc.processed:<id>``).

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
    # PROTECT: deleting an aggregate must never free its events to be aggregated and
    # billed a second time (Stripe may already count them under the aggregate's identifier).
    # Indexed only where set (``billing_ev_aggregate_idx``): every event is written
    # without an aggregate, so a full index would take one more entry on every insert.
    usage_aggregate = TenantForeignKey(
        "billing.UsageAggregate",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="events",
        db_index=False,
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
            # An aggregate's events (posting them, PROTECT on delete); partial, see the field.
            models.Index(
                fields=["usage_aggregate"],
                condition=Q(usage_aggregate__isnull=False),
                name="billing_ev_aggregate_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} x{self.quantity} ({self.organization_id})"


class MeterReportStatus(models.TextChoices):
    """Status of a ``MeterReport`` (one reporting run of one organization).

    ``queued`` (created with its ``billing.report_usage`` job by ``POST report-usage/``
    or the hourly schedule, waiting for a job worker) ->
    ``running`` -> one of: ``succeeded`` (every due aggregate acknowledged by Stripe),
    ``partial`` (some sent, some failed or needing reconciliation), ``failed`` (none
    sent, or an unexpected error: ``detail`` says which), ``dry_run``
    (nothing sent or written: ``--dry-run`` or no ``STRIPE_API_KEY``), ``skipped``
    (nothing to do here: the organization has no ``stripe_customer_id``, or another
    run held its reporting lock and does the work; ``detail`` says which). A job whose
    worker died is run again by the job engine (stalled-job retry), which resumes its
    ``running`` report; the run of a killed ``manage.py report_usage`` stays ``running``,
    and its events are picked up by the next run (see ``billing.reporting.lifecycle``).
    """

    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    PARTIAL = "partial", "partial (some aggregates failed)"
    FAILED = "failed", "failed"
    DRY_RUN = "dry_run", "dry run (nothing sent)"
    SKIPPED = "skipped", "skipped (no Stripe customer, or another run was running)"


class MeterReport(TenantModel):
    """One run of usage reporting to Stripe meters for one organization (command or API).

    ``until`` is the exclusive end (UTC) of the events it covers; counts say what it
    did. The outbox rows it created or sent are ``UsageAggregate``s. ``created_at`` is
    when it was queued (or, for the command, began); ``started_at`` when its run moved
    it ``queued -> running`` (a report can wait in the job queue; a resumed job sets it
    again); ``finished_at`` when it reached a final status.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the primary key (organization_id, id) leads with it.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="meter_reports", db_index=False
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
    started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the run began (queued -> running, UTC); null while queued.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"], name="meter_report_org_idx")]

    def __str__(self) -> str:
        return f"usage report {self.id} ({self.status})"


class UsageAggregateStatus(models.TextChoices):
    """Status of an outbox row (``UsageAggregate``).

    ``pending``: to send (again), possibly after ``next_attempt_at``. ``sent``: Stripe
    acknowledged it and its events are posted. ``failed``: retries exhausted or a
    non-retryable answer (``last_error``); the admin may queue it again while its first
    send is within ``STRIPE_RESEND_WINDOW_HOURS``. ``needs_reconciliation``: its first
    send is older than that window, past which Stripe no longer guarantees to deduplicate
    the identifier or replay the idempotency key (~24 h), so it is never resent
    automatically: compare with Stripe's meter event summaries, then resolve it in the
    admin (Stripe has it: mark sent; Stripe does not: send again).
    """

    PENDING = "pending", "pending"
    SENT = "sent", "sent (acknowledged by Stripe)"
    FAILED = "failed", "failed (retries exhausted)"
    NEEDS_RECONCILIATION = "needs_reconciliation", "needs reconciliation with Stripe"


class UsageAggregate(TenantModel):
    """The outbox: one Stripe meter event to send, for (organization, meter, UTC hour, sequence).

    ``identifier`` is derived from those four and never changes, so a resend of the
    same aggregate is deduplicated by Stripe (for ~24 h after the first send, see
    ``first_sent_at``), while events that arrive late for an hour already reported go
    into the next ``sequence``. ``value`` is the summed quantity (decimal, at most 15
    significant digits once sent: larger sums are split into several sequences before
    the first send). Events point at their aggregate (``BillingEvent.usage_aggregate``,
    ``PROTECT``) and become posted only when it is ``sent``.

    ``idempotency_key`` (the ``Idempotency-Key`` header) is the identifier for
    ``key_revision`` 0 and ``<identifier>-r<n>`` after the n-th definitive 5xx answer:
    Stripe saves and replays the result of a key, 500s included, so a retry after a
    5xx needs a new key (Stripe API reference, "Idempotent requests").
    ``first_sent_at`` (UTC) is set, and committed, before the first request leaves.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the primary key (organization_id, id) leads with it.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_aggregates", db_index=False
    )
    report = TenantForeignKey(
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
        max_length=24, choices=UsageAggregateStatus.choices, default=UsageAggregateStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    key_revision = models.PositiveSmallIntegerField(
        default=0, help_text="Bumped after each 5xx answer: the next attempt uses a new key."
    )
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    first_sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When the first request for it was sent (UTC)."
    )
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

    @property
    def idempotency_key(self) -> str:
        """The ``Idempotency-Key`` of the next attempt: ``identifier``, or
        ``<identifier>-r<key_revision>`` (at most 107 characters; Stripe allows 255)."""
        if not self.key_revision:
            return self.identifier
        return f"{self.identifier}-r{self.key_revision}"


class IdempotencyKey(TenantModel):
    """The stored outcome of one ``Idempotency-Key`` of one organization (IETF
    draft-ietf-httpapi-idempotency-key-header-07; Stripe API reference, "Idempotent requests").

    Written, in the request's own transaction, when a ``POST``/``PUT``/``PATCH``/``DELETE``
    that carried the key finished with a status below 500 (``billing.idempotency``): a
    retry with the same key and the same ``fingerprint`` gets ``status_code``,
    ``response_headers`` (``{name: value}``, only ``idempotency.keys.STORED_HEADERS``) and
    ``response_body`` (bytes) back, marked ``Idempotent-Replayed: true``, without running
    or billing anything again. ``fingerprint`` is the SHA-256 (hex) of the request
    (organization, user, method, path, query string, content type, body; see
    ``idempotency.keys.request_fingerprint``). ``request_id`` is the server id of the request
    that ran. ``expires_at`` (UTC) is ``created_at`` + ``IDEMPOTENCY_KEY_TTL_HOURS``:
    after it the key is free again and ``manage.py purge_idempotency_keys`` deletes it.

    Primary key ``(organization_id, key)`` (Django's ``CompositePrimaryKey``): keys are
    per organization, and the table is distributable by ``organization_id`` (Citus).
    Django's admin cannot show models with a composite primary key, so there is no admin
    screen for it.
    """

    pk = models.CompositePrimaryKey("organization", "key")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="idempotency_keys", db_index=False
    )
    key = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    fingerprint = models.CharField(max_length=64)
    request_id = models.CharField(max_length=128, blank=True, default="")
    method = models.CharField(max_length=10)
    path = models.TextField()
    status_code = models.PositiveSmallIntegerField()
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.BinaryField(default=b"", blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "billing_idempotency_keys"
        # The purge's batches (oldest expiry first). Not unique, so Citus needs no
        # organization_id in it.
        indexes = [models.Index(fields=["expires_at"], name="billing_idem_expires_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.organization_id})"


# The Stripe webhook event store and reconciliation runs live with their package.
from billing.stripe_sync.models import (  # noqa: E402, F401
    StripeWebhookEvent,
    UsageReconciliation,
    WebhookEventStatus,
)
