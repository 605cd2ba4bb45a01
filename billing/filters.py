"""django-filter filter set for the billing events API."""

import django_filters
from drf_spectacular.utils import extend_schema_field

from billing.models import BillingEvent, BillingEventStatus
from core.filters import UTCIsoDateTimeFilter

#: ``?status=`` accepts the stored value (``0``, ``1``) and the name the API shows in
#: ``status`` (``pending``, ``posted``); both map to the stored small integer.
STATUS_BY_PARAM: dict[str, int] = {
    **{str(value): value for value in BillingEventStatus.values},
    **{label: value for value, label in BillingEventStatus.choices},
}


def _status_value(param: str) -> int:
    return STATUS_BY_PARAM[param]


@extend_schema_field({"type": "string", "enum": list(STATUS_BY_PARAM)})
class StatusFilter(django_filters.TypedChoiceFilter):
    """``status`` by value or name (``STATUS_BY_PARAM``); documented in the OpenAPI schema
    as a string enum (the model field is an integer, which drf-spectacular would show)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault(
            "choices",
            [(param, BillingEventStatus(value).label) for param, value in STATUS_BY_PARAM.items()],
        )
        kwargs.setdefault("coerce", _status_value)
        super().__init__(*args, **kwargs)


class BillingEventFilter(django_filters.FilterSet):
    """``event_name``; ``status``: ``pending`` or ``0``, ``posted`` or ``1`` (anything
    else is a 400); ``start``/``end`` (ISO 8601, half-open ``[start, end)`` on
    ``created_at``)."""

    event_name = django_filters.CharFilter()
    status = StatusFilter()
    start = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    end = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = BillingEvent
        fields = ["event_name", "status"]
