"""``manage.py setup_demo``: the demo organization and owner that ``make run`` prints."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenancy.services import OnboardingError, organization_onboard

DEMO_NAME = "Demo Law"
DEMO_EMAIL = "owner@demo.test"
DEMO_PASSWORD = "demo-password-123"
#: Printed by ``make run`` (through this command) when ``STRIPE_API_KEY`` is unset.
STRIPE_OFF = (
    "Stripe is off (STRIPE_API_KEY is not set): no Stripe customers, subscriptions or usage "
    "reports; everything else works."
)


class Command(BaseCommand):
    """``setup_demo``: ``organization_onboard`` for "Demo Law" (slug ``demo-law``, plan pro)
    with owner ``owner@demo.test``; prints whether it was created, the onboarding notes
    (Stripe), "Stripe is off" when ``STRIPE_API_KEY`` is unset, and the login.

    Raises ``CommandError`` (exit 1) if ``demo-law`` exists with a different owner.
    """

    help = (
        "Create (idempotently) the demo organization 'Demo Law' and its owner, and print the login."
    )

    def handle(self, *args, **opts):
        try:
            result = organization_onboard(
                name=DEMO_NAME,
                owner_email=DEMO_EMAIL,
                plan_tier="pro",
                password=DEMO_PASSWORD,
            )
        except OnboardingError as exc:
            raise CommandError(f"{exc}; nothing was written.") from None
        state = "created" if result.changed else "exists"
        self.stdout.write(
            f"Demo organization {state}: {result.organization.name} ({result.organization.id})"
        )
        notes = list(result.notes)
        if not notes and not settings.STRIPE_API_KEY:
            notes.append(STRIPE_OFF)
        for note in notes:
            self.stdout.write(note)
        self.stdout.write(f"Log in with: email={DEMO_EMAIL} password={DEMO_PASSWORD}")
