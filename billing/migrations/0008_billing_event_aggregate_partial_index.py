"""billing_events.usage_aggregate_id: a partial index (where set) instead of the full one.

Every event is written without an aggregate, so the full index took one more entry on
each metered insert for nothing. On a live table of millions of events this must not
lock out writers: the model state changes as ``makemigrations`` wrote it, but the
database only gets ``CREATE INDEX CONCURRENTLY`` then ``DROP INDEX CONCURRENTLY``
(PostgreSQL manual, CREATE INDEX, "Building Indexes Concurrently"; neither blocks
inserts), outside a transaction (``atomic = False``: CONCURRENTLY cannot run in one).
The foreign key itself is left untouched (``AlterField`` would drop it and re-validate
it over the whole table under an ACCESS EXCLUSIVE lock).
"""

import django.db.models.deletion
from django.db import migrations, models

# The index Django created for the foreign key in 0004 (its generated name).
OLD_INDEX = "billing_events_usage_aggregate_id_8846234a"
NEW_INDEX = "billing_ev_aggregate_idx"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0007_meter_report_skipped_label"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="billingevent",
                    name="usage_aggregate",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The Stripe outbox aggregate this event was reported in.",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="events",
                        to="billing.usageaggregate",
                    ),
                ),
                migrations.AddIndex(
                    model_name="billingevent",
                    index=models.Index(
                        condition=models.Q(("usage_aggregate__isnull", False)),
                        fields=["usage_aggregate"],
                        name=NEW_INDEX,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=(
                        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{NEW_INDEX}" '
                        'ON "billing_events" ("usage_aggregate_id") '
                        'WHERE "usage_aggregate_id" IS NOT NULL'
                    ),
                    reverse_sql=f'DROP INDEX CONCURRENTLY IF EXISTS "{NEW_INDEX}"',
                ),
                migrations.RunSQL(
                    sql=f'DROP INDEX CONCURRENTLY IF EXISTS "{OLD_INDEX}"',
                    reverse_sql=(
                        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{OLD_INDEX}" '
                        'ON "billing_events" ("usage_aggregate_id")'
                    ),
                ),
            ],
        ),
    ]
