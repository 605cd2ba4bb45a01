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
  24 hours" (Stripe API reference, "Create a billing meter event", ``identifier``), so an
  aggregate resent 24 h or more after its first send could be counted twice; 0 or less
  would never resend anything, not even after a timeout (see
  ``billing.reporting.reconciliation``).
* ``billing.E004``: ``IDEMPOTENCY_KEY_TTL_HOURS`` is not a whole number of hours of at
  least 1: a key that expires at once would let every retry run again.
* ``billing.E005``: ``BILLING_PLANS`` is malformed (one error per problem that
  ``billing.plans.parse_plans`` finds: a missing tier or meter, a bound that is not a
  whole number, tiers not ascending, a last tier that is not open-ended, ...), or its
  tiers are not exactly ``tenancy.models.PlanTier``'s.
* ``billing.E006``: a plan prices a meter that ``STRIPE_METERS`` does not report: the
  upcoming invoice would show a charge that Stripe never bills.
* ``billing.E007``: one Stripe price id is configured for two plan meters: a subscription's
  prices could not name its plan (``billing.plans.tier_for_price_ids``).
"""

from django.conf import settings
from django.core.checks import Error, register

from billing import plans, pricing

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
            '(Stripe API reference, "Create a billing meter event").',
            id="billing.E003",
        )
    ]


@register(TAG)
def check_idempotency_ttl(app_configs=None, **kwargs) -> list[Error]:
    """``billing.E004`` when ``settings.IDEMPOTENCY_KEY_TTL_HOURS`` is not an ``int`` (not
    ``bool``) of at least 1; ``[]`` otherwise."""
    hours = getattr(settings, "IDEMPOTENCY_KEY_TTL_HOURS", None)
    if isinstance(hours, int) and not isinstance(hours, bool) and hours >= 1:
        return []
    return [
        Error(
            f"IDEMPOTENCY_KEY_TTL_HOURS must be a whole number of hours of at least 1, "
            f"not {hours!r}",
            hint="Set IDEMPOTENCY_KEY_TTL_HOURS to a whole number of hours (default 24).",
            id="billing.E004",
        )
    ]


@register(TAG)
def check_plans(app_configs=None, **kwargs) -> list[Error]:
    """``billing.E005`` per problem of ``settings.BILLING_PLANS`` (``plans.parse_plans``,
    and its tiers against ``tenancy.models.PlanTier``), ``billing.E006`` per plan meter
    missing from ``settings.STRIPE_METERS``, ``billing.E007`` per Stripe price id used
    twice; ``[]`` when the plans are valid."""
    from tenancy.models import PlanTier

    parsed, problems = plans.parse_plans(getattr(settings, "BILLING_PLANS", None))
    hint = (
        "See billing/plans.py for the shape of BILLING_PLANS (decimal strings; whole "
        "numbers for included and up_to; the last tier's up_to null)."
    )
    errors = [
        Error(f"BILLING_PLANS{'.' if path else ''}{path} {message}", hint=hint, id="billing.E005")
        for path, message in problems
    ]
    if set(PlanTier.values) != set(plans.TIERS):
        errors.append(
            Error(
                f"BILLING_PLANS tiers {sorted(plans.TIERS)} are not PlanTier's "
                f"{sorted(PlanTier.values)}",
                hint="Keep billing.plans.TIERS and tenancy.models.PlanTier the same.",
                id="billing.E005",
            )
        )
    reported = getattr(settings, "STRIPE_METERS", None) or {}
    for tier, plan in parsed.items():
        for meter in plan.meters:
            if meter not in reported:
                errors.append(
                    Error(
                        f"BILLING_PLANS.{tier}.meters.{meter} is not in STRIPE_METERS: "
                        "it would be rated here and never reported to Stripe",
                        hint="Add the meter to STRIPE_METERS or remove it from the plan.",
                        id="billing.E006",
                    )
                )
    for price_id, where in plans.duplicate_price_ids(parsed).items():
        errors.append(
            Error(
                f"BILLING_PLANS stripe_price_id {price_id!r} is used by {', '.join(where)}",
                hint="Each plan meter needs its own Stripe price (manage.py stripe_setup).",
                id="billing.E007",
            )
        )
    return errors
