"""The billing system checks: a malformed price book or default rate is reported at
start-up (``manage.py check``, ``migrate``, ``runserver``), not at the first event; so
is a resend window Stripe's deduplication does not cover (``billing.E003``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import Error, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from billing.checks import check_idempotency_ttl, check_pricing, check_resend_window

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("hours", [1, 12, 23])
def test_a_resend_window_of_1_to_23_whole_hours_is_valid(hours):
    with override_settings(STRIPE_RESEND_WINDOW_HOURS=hours):
        assert check_resend_window() == []
        assert billing_errors() == []


@pytest.mark.parametrize(
    "hours", [0, -1, 24, 25, 48, 23.5, 12.0, 0.5, 0.0, float("nan"), "23", None, True]
)
def test_a_resend_window_not_a_whole_number_of_hours_from_1_to_23_is_billing_e003(hours):
    """Stripe deduplicates a meter event identifier "within a rolling period of at least
    24 hours" only (Stripe API reference, "Create a billing meter event"): a window of
    24 h or more could resend an event Stripe no longer deduplicates (counted twice). The
    setting comes from the environment as an ``int`` (``env.int``), so a float (even
    ``12.0``), set only by overriding the settings, is refused too."""
    with override_settings(STRIPE_RESEND_WINDOW_HOURS=hours):
        errors = billing_errors()
    assert [e.id for e in errors] == ["billing.E003"], errors
    assert errors[0].msg.startswith(
        "STRIPE_RESEND_WINDOW_HOURS must be a whole number of hours from 1 to 23"
    )
    assert repr(hours) in errors[0].msg
    assert "at least 24 hours" in errors[0].hint


def _check_with_env(window: str) -> subprocess.CompletedProcess:
    """``manage.py check --tag billing`` in a subprocess whose environment sets
    ``STRIPE_RESEND_WINDOW_HOURS`` (and reads no env file)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
        "SECRET_KEY": "x" * 50,
        "GOLDLEAVES_ENV_FILE": str(ROOT / "no-such.env"),
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        "STRIPE_RESEND_WINDOW_HOURS": window,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--tag", "billing"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_resend_window_comes_from_the_environment_and_is_checked_at_start_up():
    refused = _check_with_env("24")
    assert refused.returncode != 0
    assert "billing.E003" in refused.stderr
    assert "not 24" in refused.stderr
    accepted = _check_with_env("7")
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.parametrize("hours", [1, 24, 168])
def test_an_idempotency_ttl_of_whole_hours_is_valid(hours):
    with override_settings(IDEMPOTENCY_KEY_TTL_HOURS=hours):
        assert check_idempotency_ttl() == []
        assert billing_errors() == []


@pytest.mark.parametrize("hours", [0, -1, 1.5, True, "24", None])
def test_an_idempotency_ttl_below_one_whole_hour_is_billing_e004(hours):
    with override_settings(IDEMPOTENCY_KEY_TTL_HOURS=hours):
        errors = billing_errors()
    assert [e.id for e in errors] == ["billing.E004"], errors
    assert "IDEMPOTENCY_KEY_TTL_HOURS" in errors[0].msg
