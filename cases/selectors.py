"""Reads for cases: each takes the organization and returns a queryset of its rows only.

No selector joins another tenant table: the serializers show related rows by id only
(``case.client_id``, ``document.case_id``), and a join that is not needed is a join Citus
must run across shards unless it carries the organization. Where a join is needed (a
filter or ordering over ``client__...``), ``TenantForeignKey`` adds ``organization_id`` to
its ON clause."""

from django.db.models import QuerySet

from cases.models import Case, Client, Document


def client_list(*, organization) -> QuerySet[Client]:
    """``organization``'s clients (an ``Organization`` or its id), in model order (name)."""
    return Client.objects.for_organization(organization)


def case_list(*, organization) -> QuerySet[Case]:
    """``organization``'s cases, newest ``opened_at`` first (the client is shown by id)."""
    return Case.objects.for_organization(organization)


def document_list(*, organization) -> QuerySet[Document]:
    """``organization``'s documents, newest upload first (the case is shown by id)."""
    return Document.objects.for_organization(organization)
