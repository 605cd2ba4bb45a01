"""``manage.py check_stripe_config``: compare ``BILLING_PLANS`` with what Stripe has."""

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing import stripe_catalog
from billing.management.commands._stripe_plans import stripe_plans
from billing.reporting.stripe_api import stripe_client


class Command(BaseCommand):
    """``manage.py check_stripe_config``: for every plan meter, its Stripe meter (by event
    name, with the payload keys ``billing.reporting`` sends) and its configured
    ``stripe_price_id`` (exists, active, monthly, metered on that meter, in
    ``BILLING_CURRENCY``, the plan's included units and tiers: ``billing.stripe_catalog``).
    Prints every difference, then a summary; exits 1 if there is any. Reads only."""

    help = (
        "Compare BILLING_PLANS with Stripe: each plan meter's Stripe meter and price (exists, "
        "active, metered on the meter, currency, included units and graduated tiers). Prints "
        "every difference; exits 1 on any, or without STRIPE_API_KEY."
    )

    def handle(self, *args, **opts):
        """Print ``<tier>.<meter>: <difference>`` lines and ``N difference(s)``.

        Raises:
            CommandError (exit 1): no ``STRIPE_API_KEY``, invalid ``BILLING_PLANS``, or a
                Stripe error. Exit status 1 (``SystemExit``) after printing differences.
        """
        import stripe

        plans = stripe_plans(nothing_to="compare")
        client = stripe_client()
        try:
            differences = self._compare(client, plans)
        except stripe.StripeError as exc:
            raise CommandError(f"Stripe error: {type(exc).__name__}: {exc}") from None
        for line in differences:
            self.stdout.write(line)
        checked = sum(len(plan.meters) for plan in plans.values())
        if differences:
            self.stdout.write(f"{len(differences)} difference(s) in {checked} plan meters.")
            sys.exit(1)
        self.stdout.write(f"No differences: {checked} plan meters match Stripe.")

    def _compare(self, client, plans) -> list[str]:
        names = sorted({name for plan in plans.values() for name in plan.meters})
        catalog = stripe_catalog.catalog_read(client, lookup_keys=[])
        meter_ids, differences = {}, []
        for name in names:
            stripe_name = settings.STRIPE_METERS.get(name)
            if not stripe_name:
                differences.append(f"meter {name}: not in STRIPE_METERS (never reported)")
                continue
            meter = catalog.meters.get(stripe_name)
            if meter is None:
                differences.append(f"meter {name}: Stripe has no active meter {stripe_name!r}")
                continue
            meter_ids[name] = meter["id"]
            wanted = stripe_catalog.meter_params(name, stripe_name)
            for key in ("customer_mapping", "value_settings"):
                section = stripe_catalog.field_of(meter, key, {})
                have = {k: stripe_catalog.field_of(section, k) for k in wanted[key]}
                if have != wanted[key]:
                    differences.append(f"meter {name}: {key} is {have}, not {wanted[key]}")
        for tier, plan in plans.items():
            for name, plan_meter in plan.meters.items():
                where = f"{tier}.{name}"
                if not plan_meter.stripe_price_id:
                    differences.append(f"{where}: no stripe_price_id configured")
                    continue
                price = stripe_catalog.price_retrieve(client, plan_meter.stripe_price_id)
                if price is None:
                    differences.append(f"{where}: Stripe has no price {plan_meter.stripe_price_id}")
                    continue
                wanted = stripe_catalog.price_params(
                    plan, plan_meter, product="", meter=meter_ids.get(name, "(missing meter)")
                )
                for problem in stripe_catalog.price_differences(price, wanted):
                    differences.append(f"{where}: price {plan_meter.stripe_price_id} {problem}")
        return differences
