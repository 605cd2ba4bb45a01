"""``manage.py stripe_setup [--dry-run]``: create in Stripe what ``BILLING_PLANS`` describes."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing import stripe_catalog
from billing.management.commands._stripe_plans import stripe_plans
from billing.reporting.stripe_api import stripe_client


class Command(BaseCommand):
    """``manage.py stripe_setup [--dry-run]``.

    Finds or creates, in the Stripe account of ``STRIPE_API_KEY`` (test or live mode, as
    the key is), one meter per plan meter, one product per meter and one metered price per
    plan and meter (``billing.stripe_catalog`` says how each is found again and what it
    looks like), then prints the ids to configure: the ``BILLING_PLANS`` JSON with every
    ``stripe_price_id`` filled in. Idempotent: a second run finds everything and creates
    nothing; a price that no longer matches its plan is replaced (a new price takes over
    its lookup key). ``--dry-run`` reads Stripe and says what it would create.
    """

    help = (
        "Create (idempotently: found again by meter event name, product metadata and price "
        "lookup key) the Stripe meters, products and metered prices that BILLING_PLANS "
        "describes, and print the BILLING_PLANS with the Stripe price ids to configure. "
        "--dry-run only says what would be created. Exits 1 on any error."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Read Stripe and show what would be created."
        )

    def handle(self, *args, **opts):
        """Sync the catalog; print one line per object and a summary.

        Raises:
            CommandError (exit 1): no ``STRIPE_API_KEY``, invalid ``BILLING_PLANS``, a plan
                meter missing from ``STRIPE_METERS``, or a Stripe error.
        """
        import stripe

        plans = stripe_plans(nothing_to="set up")
        names = sorted({name for plan in plans.values() for name in plan.meters})
        unreported = [name for name in names if name not in settings.STRIPE_METERS]
        if unreported:
            raise CommandError(f"Not in STRIPE_METERS: {', '.join(unreported)}.")
        self.dry_run = opts["dry_run"]
        self.counts = {"found": 0, "created": 0, "replaced": 0}
        mode = "live" if "_live_" in settings.STRIPE_API_KEY else "test"
        self.stdout.write(
            f"Stripe ({mode} mode){': dry run, nothing is created' if self.dry_run else ''}."
        )
        client = stripe_client()
        keys = [
            stripe_catalog.lookup_key(tier, name)
            for tier, plan in plans.items()
            for name in plan.meters
        ]
        try:
            catalog = stripe_catalog.catalog_read(client, lookup_keys=keys)
            price_ids = self._sync(client, catalog, plans, names)
        except stripe.StripeError as exc:
            raise CommandError(f"Stripe error: {type(exc).__name__}: {exc}") from None
        verb = "would create" if self.dry_run else "created"
        self.stdout.write(
            f"Done: {self.counts['found']} found, {self.counts['created']} {verb}, "
            f"{self.counts['replaced']} {'would be ' if self.dry_run else ''}replaced."
        )
        configured = {
            tier: {
                **settings.BILLING_PLANS[tier],
                "meters": {
                    name: {
                        **settings.BILLING_PLANS[tier]["meters"][name],
                        "stripe_price_id": price_ids[tier][name],
                    }
                    for name in plan.meters
                },
            }
            for tier, plan in plans.items()
        }
        self.stdout.write("Configure (environment or .env):")
        self.stdout.write("BILLING_PLANS=" + json.dumps(configured, separators=(",", ":")))

    def _create(self, client, kind: str, resource, params: dict, label: str) -> str:
        if self.dry_run:
            self.stdout.write(f"  would create {label}")
            self.counts["created"] += 1
            return f"(new {kind})"
        created = resource.create(
            params=params, options={"idempotency_key": stripe_catalog.idempotency_key(kind, params)}
        )
        self.stdout.write(f"  created {label}: {created['id']}")
        self.counts["created"] += 1
        return created["id"]

    def _found(self, label: str, object_id: str) -> str:
        self.stdout.write(f"  found {label}: {object_id}")
        self.counts["found"] += 1
        return object_id

    def _sync(self, client, catalog, plans, names) -> dict:
        meter_ids, product_ids = {}, {}
        self.stdout.write("Meters:")
        for name in names:
            label = f"meter {name} ({settings.STRIPE_METERS[name]})"
            found = catalog.meters.get(settings.STRIPE_METERS[name])
            meter_ids[name] = (
                self._found(label, found["id"])
                if found
                else self._create(
                    client,
                    "meter",
                    client.v1.billing.meters,
                    stripe_catalog.meter_params(name, settings.STRIPE_METERS[name]),
                    label,
                )
            )
        self.stdout.write("Products:")
        for name in names:
            label = f"product of {name}"
            found = catalog.products.get(name)
            product_ids[name] = (
                self._found(label, found["id"])
                if found
                else self._create(
                    client,
                    "product",
                    client.v1.products,
                    stripe_catalog.product_params(name),
                    label,
                )
            )
        self.stdout.write("Prices:")
        price_ids: dict[str, dict[str, str]] = {}
        for tier, plan in plans.items():
            for name, plan_meter in plan.meters.items():
                params = stripe_catalog.price_params(
                    plan, plan_meter, product=product_ids[name], meter=meter_ids[name]
                )
                label = f"price {params['lookup_key']}"
                found = catalog.prices.get(params["lookup_key"])
                differences = stripe_catalog.price_differences(found, params) if found else []
                if found and not differences:
                    price_id = self._found(label, found["id"])
                elif found:
                    self.stdout.write(
                        f"  {label} ({found['id']}) differs: {'; '.join(differences)}"
                    )
                    self.counts["replaced"] += 1
                    self.counts["created"] -= 1  # counted by _create below as a replacement
                    price_id = self._create(
                        client,
                        "price",
                        client.v1.prices,
                        {**params, "transfer_lookup_key": True},
                        label,
                    )
                else:
                    price_id = self._create(client, "price", client.v1.prices, params, label)
                price_ids.setdefault(tier, {})[name] = price_id
        return price_ids
