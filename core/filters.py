"""Filter fields for query parameters the database must be able to take.

``UTCIsoDateTimeFilter`` is django-filter's ``IsoDateTimeFilter`` whose value is converted
to UTC while it is validated. Python accepts UTC offsets up to ±23:59, PostgreSQL's
``timestamptz`` input only up to ±15:59 (PostgreSQL manual, 8.5.1.3 "Time Stamps" and
``time zone displacement out of range``), so ``?opened_before=0259-06-28T16:32:14+23:10``
would otherwise reach the database and fail there (``DataError``). The instant is the
same; a value whose UTC form leaves Python's range (years 1-9999) is a 400.
"""

from datetime import UTC, datetime

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField


def utc_instant(value: datetime) -> datetime:
    """The aware ``value`` in UTC, the same instant with an offset PostgreSQL takes (see the
    module docstring). Raises ``ValueError`` when its UTC form leaves Python's years
    1-9999 (e.g. ``0001-01-01T00:00:00+23:59``)."""
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from exc


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime form field whose clean value is an aware UTC ``datetime``
    (naive input is read in the current time zone, as Django does). Raises
    ``forms.ValidationError`` ("Enter a valid date/time.") for a malformed value or one
    outside years 1-9999 in UTC."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return utc_instant(parsed)
        except ValueError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """``IsoDateTimeFilter`` over ``UTCIsoDateTimeField`` (see the module docstring)."""

    field_class = UTCIsoDateTimeField
