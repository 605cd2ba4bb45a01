"""How staff read money and numbers: currency, quantities, counted nouns.

Money is integer cents (``billing.pricing``); it is shown in US dollars with thousands
separators and two decimals (``123456`` -> ``"$1,234.56"``). Quantities are
``Decimal`` with four stored places; they are shown without trailing zeros
(``Decimal("21.0000")`` -> ``"21"``, ``Decimal("1234.5000")`` -> ``"1,234.5"``).
"""

from decimal import Decimal

#: The currency every price in cents is in (Stripe prices of the plans are in USD).
CURRENCY_SYMBOL = "$"


def format_cents(cents: int | None) -> str:
    """``cents`` (int, may be negative) as currency: ``"$1,234.56"``, ``"-$0.05"``;
    ``None`` (no price) as ``"-"``."""
    if cents is None:
        return "-"
    cents = int(cents)
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}{CURRENCY_SYMBOL}{dollars:,}.{rest:02d}"


def format_quantity(quantity: Decimal | int | float | str | None) -> str:
    """A quantity without trailing zeros and with thousands separators: ``"21"``,
    ``"1,234.5"``, ``"0.25"``; ``None`` as ``"-"``."""
    if quantity is None:
        return "-"
    value = Decimal(str(quantity))
    if value == value.to_integral_value():
        return f"{int(value):,}"
    text = f"{value.normalize():,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` and the noun agreeing with it: ``counted(1, "event")`` -> ``"1 event"``,
    ``counted(1234, "event")`` -> ``"1,234 events"``; ``plural`` defaults to
    ``singular + "s"``."""
    noun = singular if count == 1 else (plural or f"{singular}s")
    return f"{count:,} {noun}"
