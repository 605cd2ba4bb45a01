"""Reads for cases: each takes the organization and returns a queryset of its rows only."""

from django.db.models import QuerySet

from cases.models import Case, Client, Document


def client_list(*, organization) -> QuerySet[Client]:
    """``organization``'s clients (an ``Organization`` or its id), in model order (name)."""
    return Client.objects.for_organization(organization)


def case_list(*, organization) -> QuerySet[Case]:
    """``organization``'s cases with their client joined (``select_related``), newest
    ``opened_at`` first."""
    return Case.objects.for_organization(organization).select_related("client")


def document_list(*, organization) -> QuerySet[Document]:
    """``organization``'s documents with their case joined (``select_related``), newest
    upload first."""
    return Document.objects.for_organization(organization).select_related("case")
