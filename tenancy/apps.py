from django.apps import AppConfig


class TenancyConfig(AppConfig):
    """The tenancy app: on ready, registers the OpenAPI JWT scheme, the signals that switch
    new database connections to the app role (``tenancy.rls.roles``) and detect Citus on
    them (``tenancy.citus``), and the receivers that revoke refresh tokens on a user's
    deletion or a membership's removal (``tenancy.signals``)."""

    name = "tenancy"
    verbose_name = "Tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.backends.signals import connection_created

        from tenancy import schema, signals  # noqa: F401  (schema: registers the JWT scheme)
        from tenancy.citus import detect_on_connect
        from tenancy.rls.roles import connect_signals

        connect_signals()
        signals.connect_signals()
        connection_created.connect(detect_on_connect, dispatch_uid="goldleaves_citus_detect")
