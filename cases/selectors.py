"""Reads for cases: each takes the organization and returns a queryset of its rows only."""

from django.db.models import QuerySet

from cases.models import Case, Client, Document


def client_list(*, organization) -> QuerySet[Client]:
    return Client.objects.for_organization(organization)


def case_list(*, organization) -> QuerySet[Case]:
    return Case.objects.for_organization(organization).select_related("client")


def document_list(*, organization) -> QuerySet[Document]:
    return Document.objects.for_organization(organization).select_related("case")
