"""The Stripe webhook event store and the reconciliation runs: non-tenant tables.

Neither is a tenant table: a webhook event arrives before anyone knows its organization
(and may match none), and a reconciliation run spans organizations. Neither has an
``organization_id`` column (that name marks tenant tables for ``check_isolation``): the
event's organization is ``matched_organization_id``. Imported by ``billing.models``.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenancy.models import Organization


class WebhookEventStatus(models.TextChoices):
    """``StripeWebhookEvent.status``: ``received`` (stored, its job not done yet),
    ``processed`` (applied), ``ignored`` (a type we do not act on, or a state older than
    the one we hold), ``unmatched`` (no organization has its customer), ``failed`` (the
    job gave up; ``detail`` says why)."""

    RECEIVED = "received", "received"
    PROCESSED = "processed", "processed"
    IGNORED = "ignored", "ignored"
    UNMATCHED = "unmatched", "unmatched"
    FAILED = "failed", "failed"


class StripeWebhookEvent(models.Model):
    """One Stripe event as delivered to ``POST /api/v1/billing/stripe/webhook/``, stored
    once by its Stripe id (``stripe_event_id`` is unique: a redelivery changes nothing).

    ``stripe_created_at``: the event's ``created`` (UTC, whole seconds; Stripe API
    reference, "The Event object"); ``payload``: the verified JSON body as sent;
    ``needs_attention``: staff must look (``billing.meter.error_report_triggered``: Stripe
    rejected meter events; an event that matches no organization).
    """

    stripe_event_id = models.CharField(max_length=255, unique=True)
    event_type = models.CharField(max_length=100)
    livemode = models.BooleanField(default=False)
    stripe_created_at = models.DateTimeField()
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=20, choices=WebhookEventStatus.choices, default=WebhookEventStatus.RECEIVED
    )
    matched_organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="stripe_webhook_events",
        db_column="matched_organization_id",
    )
    needs_attention = models.BooleanField(default=False)
    detail = models.TextField(blank=True, default="")

    class Meta:
        db_table = "billing_stripe_webhook_events"
        ordering = ["-received_at"]
        indexes = [
            models.Index(
                fields=["needs_attention", "received_at"], name="billing_whk_attention_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.stripe_event_id}"


class UsageReconciliation(models.Model):
    """One run of ``manage.py reconcile_usage``: its period (``YYYY-MM``), the organization
    slug it was limited to (``""``: all), how many organizations it compared, and every
    difference found, as ``[{"organization": slug, "meter": event name, "stripe_meter":
    Stripe meter event name, "local": decimal string, "stripe": decimal string,
    "pending_local": decimal string}]``; ``ok`` is true when there was none and no error.
    """

    period = models.CharField(max_length=7)
    organization_slug = models.CharField(max_length=100, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    organizations_checked = models.PositiveIntegerField(default=0)
    differences = models.JSONField(default=list, blank=True)
    ok = models.BooleanField(default=False)
    detail = models.TextField(blank=True, default="")

    class Meta:
        db_table = "billing_usage_reconciliations"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"reconciliation {self.period} ({'ok' if self.ok else 'differences'})"
