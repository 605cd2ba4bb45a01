"""What the Stripe catalog commands (``stripe_setup``, ``check_stripe_config``) share: the
plans they work from. A module starting with ``_``: Django makes no command of it."""

from django.conf import settings
from django.core.management.base import CommandError

from billing.plans import Plan, parse_plans


def stripe_plans(*, nothing_to: str) -> dict[str, Plan]:
    """``settings.BILLING_PLANS`` parsed (``billing.plans.parse_plans``), ``{tier: Plan}``,
    for a command that talks to Stripe.

    Raises:
        CommandError (exit 1): ``STRIPE_API_KEY`` is not set ("Stripe is off, nothing to
            <nothing_to>."), or ``BILLING_PLANS`` has problems (each listed, as the system
            check ``billing.E005`` lists them).
    """
    if not settings.STRIPE_API_KEY:
        raise CommandError(f"STRIPE_API_KEY is not set: Stripe is off, nothing to {nothing_to}.")
    plans, problems = parse_plans(settings.BILLING_PLANS)
    if problems:
        raise CommandError(
            "BILLING_PLANS is invalid (manage.py check --tag billing): "
            + "; ".join(f"{path} {message}" for path, message in problems)
        )
    return plans
