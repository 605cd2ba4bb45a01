"""``manage.py reconcile_usage``: local usage against Stripe's meter event summaries."""

import re
import time
from datetime import date

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.reporting.stripe_api import stripe_client
from billing.stripe_sync.reconcile import usage_reconcile
from tenancy.models import Organization

PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def previous_month(today: date) -> date:
    """The first day of the month before ``today``'s."""
    return date(today.year - 1, 12, 1) if today.month == 1 else date(today.year, today.month - 1, 1)


class Command(BaseCommand):
    """``manage.py reconcile_usage [--period YYYY-MM] [--organization SLUG]``.

    For each organization with a Stripe customer (or the one named), and each meter of
    ``STRIPE_METERS``, compares the quantity of its billing events in the month (its
    billing time zone) with the customer's meter event summaries in Stripe
    (``billing.stripe_sync.reconcile``); prints one line per organization and per
    difference, and a summary. The run is stored (admin: "Usage reconciliations").

    Exit codes: 0 no difference; 1 a difference, Stripe failed, ``STRIPE_API_KEY`` unset,
    a bad ``--period`` or an unknown ``--organization``. Reads only (one row written: the
    run), so it has no ``--dry-run``.
    """

    help = (
        "Compare, per organization and meter, the usage recorded here (billing events) with "
        "Stripe's meter event summaries for one month (default: the previous month; each "
        "organization's billing time zone). Prints every difference and exits 1 if there is "
        "one. The result is stored for staff (admin: Usage reconciliations)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", metavar="YYYY-MM", help="The month (default: last month).")
        parser.add_argument("--organization", metavar="SLUG", help="Only this organization.")

    def handle(self, *args, **opts):
        import stripe

        month = self._month(opts["period"])
        if not settings.STRIPE_API_KEY:
            raise CommandError("STRIPE_API_KEY is not set: there is no Stripe usage to compare.")
        organizations = Organization.objects.order_by("slug")
        if opts["organization"]:
            organizations = organizations.filter(slug=opts["organization"])
            if not organizations.exists():
                raise CommandError(f"No organization with slug {opts['organization']!r}.")
        organizations = list(organizations)
        self.stdout.write(
            f"Reconciling {month:%Y-%m} for {len(organizations)} organization(s) "
            f"against Stripe's meter event summaries."
        )
        started = time.monotonic()
        try:
            run = usage_reconcile(
                month=month,
                organizations=organizations,
                client=stripe_client(),
                say=self.stdout.write,
                slug_filter=opts["organization"] or "",
            )
        except stripe.StripeError as exc:
            raise CommandError(f"Stripe failed: {type(exc).__name__}: {exc}") from None
        elapsed = time.monotonic() - started
        summary = (
            f"Done: {run.organizations_checked} organization(s) compared in {elapsed:.1f} s, "
            f"{len(run.differences)} difference(s) (reconciliation #{run.pk})."
        )
        if run.differences:
            raise CommandError(summary)
        self.stdout.write(self.style.SUCCESS(summary))

    @staticmethod
    def _month(value: str | None) -> date:
        if value is None:
            return previous_month(timezone.now().date())
        match = PERIOD.match(value)
        if not match:
            raise CommandError(f"--period must be YYYY-MM, e.g. 2026-11; got {value!r}.")
        return date(int(match.group(1)), int(match.group(2)), 1)
