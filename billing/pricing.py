"""Prices of metered usage, in integer cents, and the one rounding rule of the summaries.

Rules (issue 3, "Pricing"):

* Money is integer cents; quantities are ``Decimal`` (12 digits, 4 places).
* ``unit_cost_cents`` is fixed when the event is written: the price book entry for
  the event name (``settings.BILLING_PRICE_BOOK``, a JSON object
  ``{"event_name": cents_per_unit}``) or else ``settings.USAGE_RATE_CENTS``. A later
  change of the settings does not reprice events already written.
* A summary line's cost is ``sum(quantity * unit_cost_cents)`` computed exactly in
  ``Decimal`` and rounded ONCE, half-up, to whole cents (``line_cost_cents``).
  Events with no ``unit_cost_cents`` (written by hand, not through the services)
  count as free.
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
