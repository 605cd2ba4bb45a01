from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the billing system checks (``billing.checks``, tag ``billing``)."""
        from billing import checks  # noqa: F401 - registers check_pricing on import
