from django.apps import AppConfig


class TenancyConfig(AppConfig):
    """The tenancy app: on ready, registers the OpenAPI JWT scheme and the signal that
    switches new database connections to the app role (``tenancy.db_roles``)."""

    name = "tenancy"
    verbose_name = "Tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from tenancy import schema  # noqa: F401  (registers the OpenAPI JWT scheme)
        from tenancy.db_roles import connect_signals

        connect_signals()
