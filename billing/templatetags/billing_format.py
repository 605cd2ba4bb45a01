"""Template filters for the billing admin: ``{{ cents|money }}``, ``{{ quantity|qty }}``,
``{{ count|counted:"event" }}`` (see ``billing.formatting``)."""

from django import template

from billing import formatting

register = template.Library()


@register.filter
def money(cents):
    """Integer cents as currency: ``123456`` -> ``"$1,234.56"``."""
    return formatting.format_cents(cents)


@register.filter
def qty(quantity):
    """A decimal quantity without trailing zeros: ``21.0000`` -> ``"21"``."""
    return formatting.format_quantity(quantity)


@register.filter(name="counted")
def counted_filter(count, noun: str):
    """``count`` with ``noun`` ("event") or ``"singular,plural"``: ``"1 event"``, ``"2 events"``."""
    singular, _, plural = noun.partition(",")
    return formatting.counted(int(count or 0), singular, plural or None)
