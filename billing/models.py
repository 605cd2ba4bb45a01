"""Billing events: the metered usage of each organization (see DESIGN.md, Billing events)."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenancy.models import Organization, TenantModel


class BillingEventStatus(models.IntegerChoices):
    PENDING = 0, "pending"
    POSTED = 1, "posted"


class BillingEvent(TenantModel):
    """One metered unit of usage: a billable API request, an uploaded or processed document.

    ``quantity`` is a decimal count of ``unit`` (``call``, ``document``, ``byte``,
    ``page``); ``unit_cost_cents`` is the integer price per unit in cents fixed
    at write time; ``created_at`` is UTC. Unique on (organization, event_name,
    request_id) when ``request_id`` is set, so a retried request is billed once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="billing_events"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="billing_events",
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
