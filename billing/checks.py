"""System checks of the billing settings (Django system check framework, tag ``billing``).

Django runs them on ``manage.py check``, ``runserver`` and ``migrate`` (so a deploy
whose release step migrates stops before serving); ``manage.py check --tag billing``
runs them alone. Without them a malformed price book is found only when the first
event is written, after which every billable request logs an ERROR and goes unbilled.

IDs:

* ``billing.E001``: ``BILLING_PRICE_BOOK`` is not an object of event name -> integer
  cents in ``[0, 2147483647]`` (the range of the ``integer`` column).
* ``billing.E002``: ``USAGE_RATE_CENTS`` is not an integer number of cents in that range.
"""

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
