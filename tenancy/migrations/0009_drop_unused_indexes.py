"""Three indexes that every write paid and no query needs, dropped.

* ``tenancy_membership (organization_id)`` and ``tenancy_invitation (organization_id)``:
  the indexes Django made for the organization foreign key. The primary key
  ``(organization_id, id)`` leads with the column (and the membership's unique
  ``(organization_id, user_id)`` too), so every lookup by organization has an index
  without them (``tenancy.keys.drop_organization_index``).
* ``tenancy_organization (backfill_key varchar_pattern_ops)``: the index Django adds beside
  a unique ``CharField`` for ``LIKE 'prefix%'`` queries, which nothing runs on this
  column. The uniqueness stays, as the same constraint, now declared in ``Meta``.

``backfill_organizations`` writes one membership per user and one organization per key:
its statement per batch of 5,000 users took 108.5 ms with the membership and backfill-key
indexes, 100.3 ms without (25 batches each, two alternating pairs, 300,000 users). The
model state changes as ``makemigrations`` wrote it; the database only gets ``DROP INDEX
CONCURRENTLY`` (PostgreSQL manual, DROP INDEX: it does not lock out inserts), outside a
transaction (``atomic = False``). The foreign keys and the unique constraint are left
untouched.
"""

import django.db.models.deletion
from django.db import migrations, models

from tenancy.keys import drop_organization_index

# The name Django gave the pattern index in 0003.
BACKFILL_KEY_LIKE_INDEX = "tenancy_organization_backfill_key_cd385804_like"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tenancy", "0008_invitations"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="membership",
                    name="organization",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="memberships",
                        to="tenancy.organization",
                    ),
                ),
                migrations.AlterField(
                    model_name="invitation",
                    name="organization",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="invitations",
                        to="tenancy.organization",
                    ),
                ),
                migrations.AlterField(
                    model_name="organization",
                    name="backfill_key",
                    field=models.CharField(
                        blank=True,
                        editable=False,
                        help_text=(
                            "Set by backfill_organizations: 'domain:<domain>' or "
                            "'email:<address>'."
                        ),
                        max_length=300,
                        null=True,
                    ),
                ),
                migrations.AddConstraint(
                    model_name="organization",
                    constraint=models.UniqueConstraint(
                        fields=("backfill_key",), name="tenancy_organization_backfill_key_key"
                    ),
                ),
            ],
            database_operations=[
                drop_organization_index(
                    "tenancy_membership", "tenancy_membership_organization_id_8f49c887"
                ),
                drop_organization_index(
                    "tenancy_invitation", "tenancy_invitation_organization_id_c4a918ea"
                ),
                migrations.RunSQL(
                    sql=f'DROP INDEX CONCURRENTLY IF EXISTS "{BACKFILL_KEY_LIKE_INDEX}"',
                    reverse_sql=(
                        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{BACKFILL_KEY_LIKE_INDEX}" '
                        'ON "tenancy_organization" ("backfill_key" varchar_pattern_ops)'
                    ),
                ),
            ],
        ),
    ]
