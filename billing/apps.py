from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the billing system checks (``billing.checks``, tag ``billing``) and
        plug the Stripe onboarding job into tenancy's ``organization_onboarded`` hook."""
        from billing import checks  # noqa: F401 - registers check_pricing on import
        from billing.stripe_sync.customers import organization_onboarded_receiver
        from tenancy.signals import organization_onboarded

        organization_onboarded.connect(
            organization_onboarded_receiver, dispatch_uid="billing.stripe_customer_sync"
        )
