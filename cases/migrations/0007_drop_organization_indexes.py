"""``cases_client``, ``cases_case`` and ``cases_document``: their ``(organization_id)``
indexes dropped. The primary key ``(organization_id, id)`` leads with the column, so the
indexes Django made for the organization foreign key only cost every client, case and
document written (``tenancy.keys.drop_organization_index``: ``DROP INDEX CONCURRENTLY``,
outside a transaction; the foreign keys are left untouched)."""

import django.db.models.deletion
from django.db import migrations, models

from tenancy.keys import drop_organization_index

INDEXES = {
    "client": ("cases_client", "cases_client_organization_id_e93af0ed"),
    "case": ("cases_case", "cases_case_organization_id_cb1292e0"),
    "document": ("cases_document", "cases_document_organization_id_bba2b9cb"),
}


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("cases", "0006_text_length_limits"),
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
                        on_delete=django.db.models.deletion.CASCADE,
                        to="tenancy.organization",
                    ),
                )
                for model in INDEXES
            ],
            database_operations=[
                drop_organization_index(table, index) for table, index in INDEXES.values()
            ],
        ),
    ]
