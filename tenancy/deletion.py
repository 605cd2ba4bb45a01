"""Deleting tenant rows with the organization in every statement.

Django's ``Collector`` finds related rows with ``<fk>_id IN (...)`` and deletes with
``id IN (...)``. On Citus, where tenant tables are distributed by ``organization_id``, each
such statement goes to every shard. ``TenantCollector`` (used by ``TenantModel.delete`` and
``TenantQuerySet.delete``) adds the organization:

* related rows through a ``TenantForeignKey`` are looked up with
  ``organization_id IN (<the organizations of the rows being deleted>)`` as well;
* the rows themselves are deleted, and ``SET_NULL`` / ``SET_DEFAULT`` updates made, per
  organization: ``WHERE organization_id = %s AND id IN (...)``.

Only rows whose ``organization_id`` was loaded can be scoped: Django defers every column
but the referenced ones of rows it collects through a cascade (``Collector.collect``), so
the rows an ``Organization`` deletion cascades to (a staff action in the admin) are
deleted Django's way, by id, across shards.

Everything else (signals, ``PROTECT`` / ``RESTRICT``, ordering, counts, clearing ``pk``)
is Django's. ``delete()`` follows ``django.db.models.deletion.Collector.delete`` of
Django 5.2 statement by statement; keep it in step when upgrading Django.
"""

from collections import Counter, defaultdict
from functools import reduce
from operator import attrgetter, or_

from django.db import models, transaction
from django.db.models import signals, sql
from django.db.models.deletion import Collector

from tenancy.fields import TenantForeignKey


def _is_tenant_model(model) -> bool:
    from tenancy.models import TenantModel

    return issubclass(model, TenantModel)


def _loaded_organization(obj):
    """``obj.organization_id`` if it was loaded, else ``None`` (reading a deferred column
    would cost one query per row)."""
    return obj.__dict__.get("organization_id")


def _by_organization(objs) -> dict:
    """``{organization_id or None: [pk, ...]}`` of model instances ``objs`` (pks unique,
    sorted); ``None`` collects the rows whose organization was not loaded."""
    groups: dict = defaultdict(set)
    for obj in objs:
        groups[_loaded_organization(obj)].add(obj.pk)
    return {org: sorted(pks, key=str) for org, pks in groups.items()}


class TenantCollector(Collector):
    """A ``Collector`` whose statements on tenant tables carry ``organization_id`` (see the
    module docstring). Models that are not tenant models are collected and deleted
    exactly as Django does."""

    def related_objects(self, related_model, related_fields, objs):
        """Django's related rows, restricted to the organizations of ``objs`` when every
        field in ``related_fields`` is a ``TenantForeignKey`` (the composite foreign key
        guarantees the related row is in the same organization)."""
        queryset = super().related_objects(related_model, related_fields, objs)
        organizations = {_loaded_organization(o) for o in objs}
        if (
            related_fields
            and None not in organizations
            and all(isinstance(f, TenantForeignKey) for f in related_fields)
        ):
            queryset = queryset.filter(organization_id__in=organizations)
        return queryset

    @staticmethod
    def _groups(model, objs) -> dict:
        if _is_tenant_model(model):
            return _by_organization(objs)
        return {None: sorted({obj.pk for obj in objs}, key=str)}

    def _delete_rows(self, model, instances) -> int:
        count = 0
        for org, pks in self._groups(model, instances).items():
            if org is None:
                count += sql.DeleteQuery(model).delete_batch(pks, self.using)
            else:
                scoped = model._base_manager.using(self.using).filter(organization_id=org)
                count += scoped.filter(pk__in=pks)._raw_delete(using=self.using)
        return count

    def _update_rows(self, model, objs, field, value) -> None:
        for org, pks in self._groups(model, objs).items():
            if org is None:
                sql.UpdateQuery(model).update_batch(pks, {field.name: value}, self.using)
            else:
                scoped = model._base_manager.using(self.using).filter(organization_id=org)
                scoped.filter(pk__in=pks).update(**{field.name: value})

    def delete(self):
        """Delete the collected rows (Django's ``Collector.delete``, with the tenant
        statements of ``_delete_rows`` / ``_update_rows``). Returns ``(total, {model
        label: count})``; raises what the database raises."""
        for model, instances in self.data.items():
            self.data[model] = sorted(instances, key=attrgetter("pk"))
        self.sort()
        deleted_counter = Counter()

        # One object with no dependencies: no signals, no transaction needed.
        if len(self.data) == 1 and len(instances) == 1:
            instance = list(instances)[0]
            if self.can_fast_delete(instance):
                with transaction.mark_for_rollback_on_error(self.using):
                    count = self._delete_rows(model, [instance])
                setattr(instance, model._meta.pk.attname, None)
                return count, {model._meta.label: count}

        with transaction.atomic(using=self.using, savepoint=False):
            for model, obj in self.instances_with_model():
                if not model._meta.auto_created:
                    signals.pre_delete.send(
                        sender=model, instance=obj, using=self.using, origin=self.origin
                    )

            for qs in self.fast_deletes:
                count = qs._raw_delete(using=self.using)
                if count:
                    deleted_counter[qs.model._meta.label] += count

            for (field, value), instances_list in self.field_updates.items():
                updates, objs = [], []
                for instances in instances_list:
                    if isinstance(instances, models.QuerySet) and instances._result_cache is None:
                        updates.append(instances)
                    else:
                        objs.extend(instances)
                if updates:
                    reduce(or_, updates).update(**{field.name: value})
                if objs:
                    self._update_rows(objs[0].__class__, objs, field, value)

            for instances in self.data.values():
                instances.reverse()

            for model, instances in self.data.items():
                count = self._delete_rows(model, instances)
                if count:
                    deleted_counter[model._meta.label] += count
                if not model._meta.auto_created:
                    for obj in instances:
                        signals.post_delete.send(
                            sender=model, instance=obj, using=self.using, origin=self.origin
                        )

        for model, instances in self.data.items():
            for instance in instances:
                setattr(instance, model._meta.pk.attname, None)
        return sum(deleted_counter.values()), dict(deleted_counter)
