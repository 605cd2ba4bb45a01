"""System checks of the billing settings (Django system check framework, tag ``billing``).

Django runs them on ``manage.py check``, ``runserver`` and ``migrate`` (so a deploy
whose release step migrates stops before serving); ``manage.py check --tag billing``
runs them alone. Without them a malformed price book is found only when the first
event is written, after which every billable request logs an ERROR and goes unbilled.

IDs:

* ``billing.E001``: ``BILLING_PRICE_BOOK`` is not an object of event name -> integer
  cents in ``[0, 2147483647]`` (the range of the ``integer`` column).
* ``billing.E002``: ``USAGE_RATE_CENTS`` is not an integer number of cents in that range.
* ``billing.E003``: ``STRIPE_RESEND_WINDOW_HOURS`` is not a whole number of hours
  (``int``) from 1 to 23; the environment gives whole hours only (``env.int`` in
  ``goldleaves/settings.py``), so a float can only come from code. Stripe enforces the
  uniqueness of a meter event ``identifier`` only "within a rolling period of at least
  24 hours" (https://docs.stripe.com/api/billing/meter-event/create, ``identifier``), so an
  aggregate resent 24 h or more after its first send could be counted twice; 0 or less
  would never resend anything, not even after a timeout (see
  ``billing.reporting.reconciliation``).
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
    """``billing.E003`` when ``settings.STRIPE_RESEND_WINDOW_HOURS`` is not an ``int``
    (not ``bool``, not ``float``: the environment gives whole hours only) with
    ``1 <= hours <= 23``; ``[]`` otherwise."""
    hours = getattr(settings, "STRIPE_RESEND_WINDOW_HOURS", None)
    if isinstance(hours, int) and not isinstance(hours, bool) and 1 <= hours <= 23:
        return []
    return [
        Error(
            f"STRIPE_RESEND_WINDOW_HOURS must be a whole number of hours from 1 to 23, "
            f"not {hours!r}",
            hint="Set STRIPE_RESEND_WINDOW_HOURS to a whole number of hours from 1 to 23 "
            "(default 23): Stripe deduplicates a meter event identifier for a rolling "
            "period of at least 24 hours only "
            "(https://docs.stripe.com/api/billing/meter-event/create).",
            id="billing.E003",
        )
    ]
