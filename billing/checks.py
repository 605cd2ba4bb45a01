"""System checks of the billing settings (Django system check framework, tag ``billing``).

Django runs them on ``manage.py check``, ``runserver`` and ``migrate`` (so a deploy
whose release step migrates stops before serving); ``manage.py check --tag billing``
runs them alone. Without them a malformed price book is found only when the first
event is written, after which every billable request logs an ERROR and goes unbilled.

IDs:

* ``billing.E001``: ``BILLING_PRICE_BOOK`` is not an object of event name -> integer
  cents in ``[0, 2147483647]`` (the range of the ``integer`` column).
* ``billing.E002``: ``USAGE_RATE_CENTS`` is not an integer number of cents in that range.
* ``billing.E003``: ``STRIPE_RESEND_WINDOW_HOURS`` is not a number of hours greater than 0
  and less than 24. Stripe enforces the uniqueness of a meter event ``identifier`` only
  "within a rolling period of at least 24 hours"
  (https://docs.stripe.com/api/billing/meter-event/create, ``identifier``), so an
  aggregate resent 24 h or more after its first send could be counted twice; 0 or less
  would never resend anything, not even after a timeout (see ``billing.reporting``).
"""

from django.conf import settings
from django.core.checks import Error, register

from billing import pricing

TAG = "billing"
_IDS = {"BILLING_PRICE_BOOK": "billing.E001", "USAGE_RATE_CENTS": "billing.E002"}
_HINTS = {
    "BILLING_PRICE_BOOK": (
        'Set BILLING_PRICE_BOOK to a JSON object, e.g. {"doc.processed": 2}: '
        "non-negative integer cents per unit, keyed by event name (see billing/pricing.py)."
    ),
    "USAGE_RATE_CENTS": "Set USAGE_RATE_CENTS to a non-negative integer (cents per unit).",
}


@register(TAG)
def check_pricing(app_configs=None, **kwargs) -> list[Error]:
    """One ``Error`` per problem of ``billing.pricing.configuration_problems()``: message
    ``"<SETTING> <what is wrong>"``, a hint with the expected shape, id ``billing.E00n``."""
    return [
        Error(f"{setting} {message}", hint=_HINTS[setting], id=_IDS[setting])
        for setting, message in pricing.configuration_problems()
    ]


@register(TAG)
def check_resend_window(app_configs=None, **kwargs) -> list[Error]:
    """``billing.E003`` when ``settings.STRIPE_RESEND_WINDOW_HOURS`` is not a number
    (``int`` or ``float``, not ``bool``) of hours with ``0 < hours < 24``; ``[]`` otherwise."""
    hours = getattr(settings, "STRIPE_RESEND_WINDOW_HOURS", None)
    if isinstance(hours, int | float) and not isinstance(hours, bool) and 0 < hours < 24:
        return []
    return [
        Error(
            f"STRIPE_RESEND_WINDOW_HOURS must be greater than 0 and less than 24 hours, "
            f"not {hours!r}",
            hint="Set STRIPE_RESEND_WINDOW_HOURS to a whole number of hours from 1 to 23 "
            "(default 23): Stripe deduplicates a meter event identifier for a rolling "
            "period of at least 24 hours only "
            "(https://docs.stripe.com/api/billing/meter-event/create).",
            id="billing.E003",
        )
    ]
