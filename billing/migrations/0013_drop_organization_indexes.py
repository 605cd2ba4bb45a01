"""``billing_meterreport (organization_id)`` and ``billing_usageaggregate
(organization_id)`` dropped: the primary key ``(organization_id, id)`` leads with the
column, so the indexes Django made for the organization foreign key only cost every
report and aggregate written (``tenancy.keys.drop_organization_index``: ``DROP INDEX
CONCURRENTLY``, outside a transaction; the foreign keys are left untouched)."""

import django.db.models.deletion
from django.db import migrations, models

from tenancy.keys import drop_organization_index


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0012_stripe_webhooks_reconciliation"),
        ("tenancy", "0009_drop_unused_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name=model,
                    name="organization",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name=related_name,
                        to="tenancy.organization",
                    ),
                )
                for model, related_name in (
                    ("meterreport", "meter_reports"),
                    ("usageaggregate", "usage_aggregates"),
                )
            ],
            database_operations=[
                drop_organization_index(
                    "billing_meterreport", "billing_meterreport_organization_id_72b352e6"
                ),
                drop_organization_index(
                    "billing_usageaggregate", "billing_usageaggregate_organization_id_b0fe19d5"
                ),
            ],
        ),
    ]
