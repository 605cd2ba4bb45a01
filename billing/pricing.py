"""Prices of metered usage, in integer cents, and the one rounding rule of the summaries.

Rules:

* Money is integer cents; quantities are ``Decimal`` (12 digits, 4 places).
* ``unit_cost_cents`` is fixed when the event is written: the price book entry for
  the event name (``settings.BILLING_PRICE_BOOK``, a JSON object
  ``{"event_name": cents_per_unit}``) or else ``settings.USAGE_RATE_CENTS``. A later
  change of the settings does not reprice events already written.
* Where the stored price is the cost (an event name that no plan in ``BILLING_PLANS``
  prices, and the staff usage dashboard), a line's cost is ``sum(quantity *
  unit_cost_cents)`` computed exactly in ``Decimal`` and rounded ONCE, half-up, to whole
  cents (``line_cost_cents``). Events with no ``unit_cost_cents`` (written by hand, not
  through the services) count as free. A plan meter's amount comes from the plan's
  rating instead (``billing.rating``, ``billing.usage``); the default plans are these
  same prices, so the two agree to the cent for events written under them.
"""

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def price_book() -> dict[str, int]:
    """The configured price book: ``{event_name: cents per unit (int >= 0)}``.

    Raises:
        ImproperlyConfigured: ``BILLING_PRICE_BOOK`` is not an object of non-negative integers.
    """
    book = getattr(settings, "BILLING_PRICE_BOOK", None) or {}
    if not isinstance(book, dict):
        raise ImproperlyConfigured("BILLING_PRICE_BOOK must be a JSON object {event_name: cents}.")
    for name, cents in book.items():
        if isinstance(cents, bool) or not isinstance(cents, int) or cents < 0:
            raise ImproperlyConfigured(
                f"BILLING_PRICE_BOOK[{name!r}] must be a non-negative integer (cents per unit)."
            )
    return book


#: The largest price that fits ``BillingEvent.unit_cost_cents``, a PostgreSQL ``integer``
#: (4 bytes, -2147483648 to +2147483647: PostgreSQL manual, 8.1.1 "Integer Types").
MAX_UNIT_COST_CENTS = 2_147_483_647

#: ``BillingEvent.event_name`` is ``max_length=64``.
MAX_EVENT_NAME_LENGTH = 64


def _cents_problem(value) -> str | None:
    """Why ``value`` is not a valid price in cents, or ``None`` if it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer number of cents, not {type(value).__name__} {value!r}"
    if not 0 <= value <= MAX_UNIT_COST_CENTS:
        return f"must be between 0 and {MAX_UNIT_COST_CENTS} cents, not {value}"
    return None


def configuration_problems() -> list[tuple[str, str]]:
    """Everything wrong with the pricing settings, for the start-up system check
    (``billing.checks``): ``[(setting name, message)]``, empty when valid.

    ``BILLING_PRICE_BOOK`` must be an object (``{}`` or unset is allowed) whose keys are
    event names of 1-64 characters and whose values are integer cents in
    ``[0, MAX_UNIT_COST_CENTS]``; ``USAGE_RATE_CENTS`` must be an integer in the same
    range. Stricter than ``price_book()`` at write time, which checks types only: an
    out-of-range price is refused by PostgreSQL on INSERT (a ``DataError``, logged by
    the writer) rather than repeated here on every event.
    """
    problems = []
    book = getattr(settings, "BILLING_PRICE_BOOK", None)
    if book is None:
        book = {}
    if not isinstance(book, dict):
        problems.append(
            (
                "BILLING_PRICE_BOOK",
                f"must be a JSON object {{event_name: cents per unit}}, "
                f"not {type(book).__name__} {book!r}",
            )
        )
        book = {}
    for name, cents in book.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_EVENT_NAME_LENGTH:
            problems.append(
                (
                    "BILLING_PRICE_BOOK",
                    f"key {name!r} must be an event name of 1-{MAX_EVENT_NAME_LENGTH} characters",
                )
            )
        problem = _cents_problem(cents)
        if problem:
            problems.append(("BILLING_PRICE_BOOK", f"[{name!r}] {problem}"))
    if not hasattr(settings, "USAGE_RATE_CENTS"):
        problems.append(("USAGE_RATE_CENTS", "is not set"))
    else:
        problem = _cents_problem(settings.USAGE_RATE_CENTS)
        if problem:
            problems.append(("USAGE_RATE_CENTS", problem))
    return problems


def unit_cost_cents(event_name: str) -> int:
    """Price of one unit of ``event_name`` in integer cents (price book, else USAGE_RATE_CENTS)."""
    book = price_book()
    if event_name in book:
        return book[event_name]
    return int(settings.USAGE_RATE_CENTS)


def line_cost_cents(exact_cost) -> int:
    """Round an exact line cost (``Decimal`` cents, or ``None`` for an empty line) once,
    half-up, to integer cents: ``Decimal("2.5") -> 3``, ``Decimal("2.4999") -> 2``."""
    if exact_cost is None:
        return 0
    return int(Decimal(exact_cost).quantize(Decimal("1"), rounding=ROUND_HALF_UP))
