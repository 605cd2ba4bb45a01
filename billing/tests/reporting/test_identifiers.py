"""``billing.reporting.identifiers``: the reported hour and meter event values."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.reporting import identifiers


def test_value_significant_digits():
    assert identifiers.format_value(Decimal("12.5000")) == "12.5"
    assert identifiers.format_value(Decimal("100")) == "100"
    assert identifiers.format_value(Decimal("123456789012345")) == "123456789012345"
    with pytest.raises(ValueError, match="15"):
        identifiers.format_value(Decimal("1234567890123.456"))
    assert identifiers.value_fits(Decimal("99999999999.9000"))
    assert not identifiers.value_fits(Decimal("100099999999.8999"))


def test_timestamps_are_utc_hours(customer_org):
    assert identifiers.current_hour(datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC)) == datetime(
        2026, 3, 1, 10, tzinfo=UTC
    )
