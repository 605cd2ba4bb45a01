"""Migration 0006: aggregates sent before it get ``first_sent_at``, so the resend-window
rules apply to them; its backfill turns on the cross-tenant path itself."""

import importlib
import uuid
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from billing.models import UsageAggregate
from billing.reporting import reconciliation
from billing.tests.reporting.scenario import HOUR, ident
from tenancy.context import cross_tenant

MIGRATION_0006 = importlib.import_module(
    "billing.migrations.0006_outbox_first_sent_key_revision_protect"
)


SENT_BEFORE = {  # name: (status, attempts, last_error, stamped?)
    "timed_out_pending": ("pending", 1, "APIConnectionError: read timed out", True),
    "failed_after_5xx": ("failed", 5, "APIError: planned 500", True),
    "retried_by_the_admin": ("pending", 0, "APIError: planned 500", True),
    "old_hour_after_requests": (
        "failed",
        3,
        "the hour is more than 35 days old: Stripe no longer accepts it",
        True,
    ),
    "too_many_digits": (
        "failed",
        2,
        "value 1000000000000000.0000 has 16 significant digits (Stripe allows 15)",
        False,
    ),
    "old_hour_never_sent": (
        "failed",
        1,
        "the hour is more than 35 days old: Stripe no longer accepts it",
        False,
    ),
    "never_tried": ("pending", 0, "", False),
    "sent": ("sent", 1, "", False),
}


def insert_0005_aggregate(org, sequence, status, attempts, last_error, created_at):
    """One outbox row as migration 0005 shaped the table (no first_sent_at, no key_revision)."""
    with cross_tenant(reason="test set-up"), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_usageaggregate (id, organization_id, event_name,"
            " meter_event_name, period_start, sequence, value, event_count, identifier, status,"
            " attempts, last_error, created_at, sent_at)"
            " VALUES (%s, %s, 'api.request', 'api_requests', %s, %s, 1, 1, %s, %s, %s, %s, %s,"
            " %s) RETURNING id",
            [
                uuid.uuid4(),
                org.pk,
                HOUR,
                sequence,
                ident(org, "api_requests", 0, sequence),
                status,
                attempts,
                last_error,
                created_at,
                created_at if status == "sent" else None,
            ],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_migration_0006_stamps_first_sent_at_on_aggregates_sent_before_it(customer_org):
    created_at = timezone.now() - timedelta(days=3)
    call_command("migrate", "billing", "0005", verbosity=0)
    try:
        ids = {
            name: insert_0005_aggregate(customer_org, n, status, attempts, error, created_at)
            for n, (name, (status, attempts, error, _)) in enumerate(SENT_BEFORE.items(), 1)
        }
    finally:
        call_command("migrate", "billing", verbosity=0)
    with cross_tenant(reason="test assertions"):
        first_sent = dict(UsageAggregate.objects.values_list("pk", "first_sent_at"))
        stamped = {name: first_sent[pk] for name, pk in ids.items()}
        assert stamped == {
            name: created_at if expected else None
            for name, (_, _, _, expected) in SENT_BEFORE.items()
        }
        # ... so the rules for sent aggregates apply: past the window the admin's retry
        # refuses them and they can be reconciled; a never-sent failure is queued again
        requeued, refused = reconciliation.aggregates_requeue_failed(
            aggregates=UsageAggregate.objects.all()
        )
        assert requeued == 2  # too_many_digits, old_hour_never_sent
        assert sorted(refused) == sorted(
            ident(customer_org, "api_requests", 0, n)
            for n, name in enumerate(SENT_BEFORE, 1)
            if name in ("failed_after_5xx", "old_hour_after_requests")
        )
        failed = UsageAggregate.objects.get(pk=ids["failed_after_5xx"])
        assert reconciliation.reconciliation_resolve(aggregate=failed, stripe_has_it=True, by="ops")


@pytest.mark.rls_raw
def test_the_0006_backfill_turns_on_the_cross_tenant_path_itself(org):
    """Migrations run as the owner, which FORCE row-level security filters like anyone
    (the suite's owner is a superuser, which is exempt, so this runs the step as the app
    role): without ``app.cross_tenant`` the UPDATE would see no row."""
    with cross_tenant(reason="test set-up"):
        aggregate = UsageAggregate.objects.create(
            organization=org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            value=1,
            identifier=ident(org, "api_requests", 0),
            attempts=2,
            last_error="APIConnectionError: read timed out",
            created_at=timezone.now() - timedelta(days=2),
        )
    with connection.schema_editor() as editor:
        MIGRATION_0006.backfill_first_sent_at(django_apps, editor)
    with connection.cursor() as cursor:  # the setting is put back
        cursor.execute("SELECT current_setting('app.cross_tenant', true)")
        assert cursor.fetchone()[0] in ("", None)
    with cross_tenant(reason="test assertions"):
        aggregate.refresh_from_db()
    assert aggregate.first_sent_at == aggregate.created_at
