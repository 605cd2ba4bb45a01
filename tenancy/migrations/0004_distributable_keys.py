"""tenancy_membership: the database primary key becomes (organization_id, id), and its
identity column a bigint with a sequence default (``tenancy.keys``: what Citus needs to
distribute the table by organization_id). In place, with data: the index is built
CONCURRENTLY (hence ``atomic = False``), the swap takes one short lock. Reversible."""

from django.db import migrations

from tenancy.keys import TenantPrimaryKeys, identity_to_sequence_sql, sequence_to_identity_sql


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("tenancy", "0003_organization_backfill_key")]

    operations = [
        migrations.RunSQL(
            identity_to_sequence_sql("tenancy_membership"),
            reverse_sql=sequence_to_identity_sql("tenancy_membership"),
        ),
        TenantPrimaryKeys(models=["membership"]),
    ]
