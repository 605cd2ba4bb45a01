"""Clients, cases, documents: the database primary key becomes (organization_id, id) and
the foreign keys between them only the composite (organization_id, x_id) ones
(``tenancy.keys``, ``tenancy.fields.TenantForeignKey``). In place, with data: indexes
built CONCURRENTLY (hence ``atomic = False``), one short locked swap per table, parents
first, the composite keys validated afterwards. Reversible."""

import django.db.models.deletion
from django.db import migrations

import tenancy.fields
from tenancy.keys import TenantPrimaryKeys


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("cases", "0004_row_level_security")]

    operations = [
        # The database first (it finds the single-column keys to drop in this state) ...
        TenantPrimaryKeys(models=["client", "case", "document"]),
        # ... then the model state: the same columns, no single-column constraint.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="case",
                    name="client",
                    field=tenancy.fields.TenantForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="cases",
                        to="cases.client",
                    ),
                ),
                migrations.AlterField(
                    model_name="document",
                    name="case",
                    field=tenancy.fields.TenantForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="documents",
                        to="cases.case",
                    ),
                ),
            ],
        ),
    ]
