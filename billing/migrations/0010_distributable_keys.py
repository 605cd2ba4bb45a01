"""Meter reports, usage aggregates, billing events: the database primary key becomes
(organization_id, id) and the foreign keys between them only the composite
(organization_id, x_id) ones (``tenancy.keys``, ``tenancy.fields.TenantForeignKey``). In
place, with data: indexes built CONCURRENTLY (hence ``atomic = False``; billing_events
keeps taking inserts while its index builds), one short locked swap per table, parents
first, the composite keys validated afterwards. Reversible."""

import django.db.models.deletion
from django.db import migrations

import tenancy.fields
from tenancy.keys import TenantPrimaryKeys


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("billing", "0009_meter_report_started_at")]

    operations = [
        # The database first (it finds the single-column keys to drop in this state) ...
        TenantPrimaryKeys(models=["meterreport", "usageaggregate", "billingevent"]),
        # ... then the model state: the same columns, no single-column constraint.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="billingevent",
                    name="usage_aggregate",
                    field=tenancy.fields.TenantForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The Stripe outbox aggregate this event was reported in.",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="events",
                        to="billing.usageaggregate",
                    ),
                ),
                migrations.AlterField(
                    model_name="usageaggregate",
                    name="report",
                    field=tenancy.fields.TenantForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="aggregates",
                        to="billing.meterreport",
                    ),
                ),
            ],
        ),
    ]
