"""``manage.py setup_demo``: the demo organization and owner that ``make run`` prints."""

from django.core.management.base import BaseCommand

from tenancy.services import organization_onboard

DEMO_NAME = "Demo Law"
DEMO_EMAIL = "owner@demo.test"
DEMO_PASSWORD = "demo-password-123"


class Command(BaseCommand):
    help = (
        "Create (idempotently) the demo organization 'Demo Law' and its owner, and print the login."
    )

    def handle(self, *args, **opts):
        result = organization_onboard(
            name=DEMO_NAME,
            owner_email=DEMO_EMAIL,
            plan_tier="pro",
            password=DEMO_PASSWORD,
        )
        state = "created" if result.changed else "exists"
        self.stdout.write(
            f"Demo organization {state}: {result.organization.name} ({result.organization.id})"
        )
        self.stdout.write(f"Log in with: email={DEMO_EMAIL} password={DEMO_PASSWORD}")
