"""The billing system checks: a malformed price book or default rate is reported at
start-up (``manage.py check``, ``migrate``, ``runserver``), not at the first event."""

import pytest
from django.core.checks import Error, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from billing.checks import check_pricing


def billing_errors() -> list[Error]:
    """The errors of the registered checks with the ``billing`` tag (proves registration)."""
    return [m for m in run_checks(tags=["billing"]) if m.id.startswith("billing.")]


@override_settings(BILLING_PRICE_BOOK={"doc.processed": 2, "api.request": 0}, USAGE_RATE_CENTS=1)
def test_valid_pricing_has_no_errors():
    assert check_pricing() == []
    assert billing_errors() == []


@override_settings(BILLING_PRICE_BOOK={}, USAGE_RATE_CENTS=0)
def test_empty_price_book_and_free_default_are_valid():
    assert billing_errors() == []


@pytest.mark.parametrize(
    ("book", "fragment"),
    [
        (["api.request", 2], "must be a JSON object"),
        ("api.request=2", "must be a JSON object"),
        ({"api.request": "cheap"}, "['api.request'] must be an integer number of cents, not str"),
        ({"api.request": 1.5}, "must be an integer number of cents, not float"),
        ({"api.request": True}, "must be an integer number of cents, not bool"),
        ({"api.request": -1}, "must be between 0 and 2147483647 cents, not -1"),
        ({"api.request": 3_000_000_000}, "must be between 0 and 2147483647 cents"),
        ({"x" * 65: 1}, "must be an event name of 1-64 characters"),
        ({"": 1}, "must be an event name of 1-64 characters"),
    ],
)
def test_malformed_price_book_is_billing_e001(book, fragment):
    with override_settings(BILLING_PRICE_BOOK=book):
        errors = billing_errors()
    assert [e.id for e in errors] == ["billing.E001"], errors
    assert errors[0].msg.startswith("BILLING_PRICE_BOOK ")
    assert fragment in errors[0].msg
    assert "JSON object" in errors[0].hint


@pytest.mark.parametrize("rate", ["1", -5, 2**31, None, 0.5])
def test_malformed_default_rate_is_billing_e002(rate):
    with override_settings(USAGE_RATE_CENTS=rate):
        errors = billing_errors()
    assert [e.id for e in errors] == ["billing.E002"], errors
    assert errors[0].msg.startswith("USAGE_RATE_CENTS ")


def test_every_problem_is_reported_at_once():
    with override_settings(BILLING_PRICE_BOOK={"a": -1, "b": "x"}, USAGE_RATE_CENTS=-1):
        assert [e.id for e in billing_errors()] == ["billing.E001", "billing.E001", "billing.E002"]


def test_manage_py_check_fails_on_a_malformed_price_book():
    with override_settings(BILLING_PRICE_BOOK={"api.request": "cheap"}):
        with pytest.raises(SystemCheckError, match=r"billing\.E001"):
            call_command("check", tag=["billing"])
    call_command("check", tag=["billing"])  # control: the configured settings pass
