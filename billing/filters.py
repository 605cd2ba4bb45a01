"""django-filter filter set for the billing events API."""

import django_filters

from billing.models import BillingEvent, BillingEventStatus


class BillingEventFilter(django_filters.FilterSet):
    """``event_name``, ``status`` (0 pending, 1 posted), ``start``/``end`` (ISO 8601,
    half-open ``[start, end)`` on ``created_at``)."""

    event_name = django_filters.CharFilter()
    status = django_filters.TypedChoiceFilter(choices=BillingEventStatus.choices, coerce=int)
    start = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    end = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = BillingEvent
        fields = ["event_name", "status"]
