import django.contrib.postgres.fields
import django.utils.timezone
from django.db import migrations, models

# Append-only in the database: any UPDATE or DELETE of a row is refused, whoever runs it
# (PostgreSQL manual, "CREATE TRIGGER" and "PL/pgSQL: Errors and Messages").
APPEND_ONLY = """
CREATE FUNCTION tenancy_staffaccess_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tenancy_staffaccess is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER tenancy_staffaccess_append_only
    BEFORE UPDATE OR DELETE ON tenancy_staffaccess
    FOR EACH ROW EXECUTE FUNCTION tenancy_staffaccess_append_only();
"""
DROP_APPEND_ONLY = """
DROP TRIGGER IF EXISTS tenancy_staffaccess_append_only ON tenancy_staffaccess;
DROP FUNCTION IF EXISTS tenancy_staffaccess_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tenancy", "0005_user_tokens_valid_after"),
    ]

    operations = [
        migrations.CreateModel(
            name="StaffAccess",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "created_at",
                    models.DateTimeField(
                        db_index=True, default=django.utils.timezone.now, editable=False
                    ),
                ),
                (
                    "staff_user_id",
                    models.BigIntegerField(help_text="The staff user's id (no foreign key)."),
                ),
                ("staff_email", models.CharField(max_length=254)),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("view_list", "view list"),
                            ("view_object", "view object"),
                            ("change", "change"),
                            ("delete", "delete"),
                            ("export", "export"),
                            ("other", "other page"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "model",
                    models.CharField(
                        blank=True,
                        help_text="app_label.model_name; empty for other pages.",
                        max_length=200,
                    ),
                ),
                ("object_id", models.CharField(blank=True, max_length=200)),
                (
                    "object_ids",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="Every object id acted on (list pages, actions).",
                    ),
                ),
                (
                    "organization_ids",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.UUIDField(),
                        blank=True,
                        default=list,
                        help_text="The organizations touched.",
                        size=None,
                    ),
                ),
                (
                    "request_id",
                    models.CharField(
                        blank=True,
                        help_text="The server request id (X-Server-Request-ID).",
                        max_length=64,
                    ),
                ),
                ("method", models.CharField(max_length=10)),
                ("path", models.CharField(max_length=2000)),
                ("status_code", models.PositiveSmallIntegerField(null=True)),
                (
                    "reason",
                    models.CharField(
                        help_text="The cross_tenant(reason=...) given.", max_length=200
                    ),
                ),
            ],
            options={
                "verbose_name": "staff access",
                "verbose_name_plural": "staff access log",
                "ordering": ["-created_at", "-id"],
                "indexes": [
                    models.Index(
                        fields=["staff_user_id", "created_at"], name="staffaccess_user_idx"
                    )
                ],
            },
        ),
        migrations.RunSQL(APPEND_ONLY, DROP_APPEND_ONLY),
    ]
