from django.apps import AppConfig


class TenancyConfig(AppConfig):
    """The tenancy app: on ready, registers the OpenAPI JWT scheme and the signals that
    switch new database connections to the app role (``tenancy.rls.roles``) and detect
    Citus on them (``tenancy.citus``)."""

    name = "tenancy"
    verbose_name = "Tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.backends.signals import connection_created

        from tenancy import schema  # noqa: F401  (registers the OpenAPI JWT scheme)
        from tenancy.citus import detect_on_connect
        from tenancy.rls.roles import connect_signals

        connect_signals()
        connection_created.connect(detect_on_connect, dispatch_uid="goldleaves_citus_detect")
