"""Free-text fields get a maximum length: ``Client.notes`` and ``Case.description`` at most
``cases.models.MAX_TEXT_LENGTH`` (10,000) characters, in the serializers (the model
field's ``max_length``) and as CHECK constraints in the database.

The constraints are added ``NOT VALID`` (PostgreSQL manual, ALTER TABLE: "ADD
table_constraint ... NOT VALID"): every new or updated row is checked at once, existing
rows are not scanned (no long lock, and a row stored before the limit does not make the
migration fail). DEPLOY.md says how to find longer rows and ``VALIDATE CONSTRAINT``
afterwards."""

import django.db.models.functions.text
import django.db.models.lookups
from django.db import migrations, models

_CONSTRAINTS = [
    ("cases_case", "cases_case_description_max_length", "description"),
    ("cases_client", "cases_client_notes_max_length", "notes"),
]


class Migration(migrations.Migration):
    dependencies = [("cases", "0005_distributable_keys")]

    operations = [
        migrations.AlterField(
            model_name="case",
            name="description",
            field=models.TextField(blank=True, default="", max_length=10000),
        ),
        migrations.AlterField(
            model_name="client",
            name="notes",
            field=models.TextField(blank=True, default="", max_length=10000),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" '
                    f'CHECK (char_length("{column}") <= 10000) NOT VALID',
                    reverse_sql=f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"',
                )
                for table, name, column in _CONSTRAINTS
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="case",
                    constraint=models.CheckConstraint(
                        condition=django.db.models.lookups.LessThanOrEqual(
                            django.db.models.functions.text.Length("description"), 10000
                        ),
                        name="cases_case_description_max_length",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="client",
                    constraint=models.CheckConstraint(
                        condition=django.db.models.lookups.LessThanOrEqual(
                            django.db.models.functions.text.Length("notes"), 10000
                        ),
                        name="cases_client_notes_max_length",
                    ),
                ),
            ],
        ),
    ]
