"""django-filter filter sets for the cases API."""

import django_filters

from cases.models import Case, CaseStatus, Client, Document
from core.filters import UTCIsoDateTimeFilter


class ClientFilter(django_filters.FilterSet):
    """``name`` (case-insensitive substring), ``email`` (case-insensitive exact),
    ``created_after``/``created_before`` (ISO 8601, half-open ``[after, before)``). A
    malformed value is a 400. Text search (``?search=``) is DRF's SearchFilter on the view."""

    name = django_filters.CharFilter(lookup_expr="icontains")
    email = django_filters.CharFilter(lookup_expr="iexact")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Client
        fields = ["name", "email"]


class CaseFilter(django_filters.FilterSet):
    """``status``, ``client`` (id), ``opened_after``/``opened_before`` (ISO 8601, half-open
    ``[after, before)``). Text search (``?search=``) is DRF's SearchFilter on the view."""

    status = django_filters.ChoiceFilter(choices=CaseStatus.choices)
    client = django_filters.UUIDFilter(field_name="client_id")
    opened_after = UTCIsoDateTimeFilter(field_name="opened_at", lookup_expr="gte")
    opened_before = UTCIsoDateTimeFilter(field_name="opened_at", lookup_expr="lt")

    class Meta:
        model = Case
        fields = ["status", "client"]


class DocumentFilter(django_filters.FilterSet):
    """``case`` (id), ``content_type`` (exact, e.g. ``application/pdf``),
    ``uploaded_after``/``uploaded_before`` (ISO 8601, half-open ``[after, before)``). A
    malformed value is a 400. Text search (``?search=``) is DRF's SearchFilter on the view."""

    case = django_filters.UUIDFilter(field_name="case_id")
    content_type = django_filters.CharFilter()
    uploaded_after = UTCIsoDateTimeFilter(field_name="uploaded_at", lookup_expr="gte")
    uploaded_before = UTCIsoDateTimeFilter(field_name="uploaded_at", lookup_expr="lt")

    class Meta:
        model = Document
        fields = ["case", "content_type"]
