"""``TenantForeignKey``: the foreign key from one tenant model to another.

Tenant tables are distributed by ``organization_id`` (Citus) and their primary key in the
database is ``(organization_id, id)`` (``tenancy.keys``). A foreign key between two of them
must therefore be the composite ``(organization_id, x_id) -> (organization_id, id)``:
Citus enforces a foreign key between distributed tables only when it includes the
distribution column at the same position on both sides (Citus docs, "Table
Management / Foreign keys", and ``create_distributed_table``). Django knows only
single-column foreign keys, so this field

* creates no database constraint (``db_constraint=False``): the composite one is made
  by the migrations (``tenancy.rls.policies.same_org_fk_sql``, ``tenancy.keys``);
* adds ``source.organization_id = target.organization_id`` to every JOIN over it
  (``get_extra_restriction``), so ``select_related``, ``filter(client__name=...)`` and
  ``order_by("case__title")`` join inside one organization and Citus can run the join on
  one shard (a join on ``client_id = id`` alone "requires repartitioning");
* fetches ``instance.<field>`` with the instance's organization
  (``get_extra_descriptor_filter``), so the lazy lookup is routed to one shard too.

The reverse accessor (``client.cases``) filters by ``client_id`` only; tenant code reads
related rows through selectors that filter the organization.
"""

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.lookups import Exact


class TenantForeignKey(models.ForeignKey):
    """A ``ForeignKey`` from a tenant model to another tenant model (both with a NOT NULL
    ``organization`` foreign key): same arguments as ``ForeignKey``, except that
    ``db_constraint`` is always ``False`` (passing ``True`` raises
    ``ImproperlyConfigured``), since the database constraint is the composite one."""

    def __init__(self, to, on_delete, **kwargs):
        if kwargs.get("db_constraint", False):
            raise ImproperlyConfigured(
                "TenantForeignKey creates no single-column constraint: the database has the "
                "composite (organization_id, <column>) foreign key instead."
            )
        kwargs["db_constraint"] = False
        super().__init__(to, on_delete, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("db_constraint", None)  # always False: implied by the class
        return name, path, args, kwargs

    def get_extra_restriction(self, alias, related_alias):
        """The JOIN condition ``<related_alias>.organization_id = <alias>.organization_id``
        (``related_alias``: this model's table; ``alias``: the target's). ``None`` when
        Django asks without both aliases (it trims the join in ``split_exclude``, where
        the outer query filters the organization anyway)."""
        if alias is None or related_alias is None:
            return None
        source = self.model._meta.get_field("organization")
        target = self.related_model._meta.get_field("organization")
        return Exact(source.get_col(related_alias), target.get_col(alias))

    def get_extra_descriptor_filter(self, instance):
        """``instance.<field>`` is fetched with ``organization_id = instance.organization_id``
        as well as its id (dict for ``QuerySet.filter``)."""
        return {"organization_id": instance.organization_id}
