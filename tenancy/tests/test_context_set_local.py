"""The tenant settings are ``SET LOCAL`` statements in one round trip, validated before they
are sent; on Citus they are preceded by ``citus.propagate_set_commands = 'local'``; the
database default ``app.rls_enabled`` is ``'on'``, so a session without the transaction's
settings (a Citus worker they did not reach) enforces row-level security.

Plain PostgreSQL has no Citus: ``uses_citus`` is forced to True to check the statement the
Citus path sends (PostgreSQL accepts ``citus.propagate_set_commands`` as a placeholder
setting, so the same statement runs here)."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from cases.tests.factories import ClientFactory
from tenancy import citus, context
from tenancy.context import set_local_sql, tenant_context
from tenancy.rls.roles import rls_database_default
from tenancy.tests.factories import OrganizationFactory

pytestmark = pytest.mark.rls_raw


def _settings() -> dict:
    names = ["app.current_org", "app.current_user", "app.rls_enabled", "app.cross_tenant"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT "
            + ", ".join("current_setting(%s, true)" for _ in names)
            + ", current_setting('citus.propagate_set_commands', true)",
            names,
        )
        row = cursor.fetchone()
    return dict(zip([*names, "citus.propagate_set_commands"], row, strict=True))


def test_the_statement_is_set_local_per_setting_with_citus_propagation_first():
    values = {"app.current_org": "8c6e1d4e-4a4c-4a4e-9c59-3f4f0b6a5a10", "app.current_user": "7"}
    assert set_local_sql(values, citus=False) == (
        'SET LOCAL "app"."current_org" = \'8c6e1d4e-4a4c-4a4e-9c59-3f4f0b6a5a10\'; '
        'SET LOCAL "app"."current_user" = \'7\''
    )
    assert set_local_sql(values, citus=True).startswith(
        'SET LOCAL citus.propagate_set_commands = \'local\'; SET LOCAL "app"."current_org"'
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("app.current_org", "x'; RESET ROLE; SELECT '"),
        ("app.current_org", "8C6E1D4E-4A4C-4A4E-9C59-3F4F0B6A5A10"),  # not canonical
        ("app.current_user", "7; DROP TABLE cases_case"),
        ("app.current_user", "٣"),  # a digit, but not ASCII
        ("app.rls_enabled", "true"),
        ("app.cross_tenant", "off"),
        ("search_path", "public"),  # not a tenant setting
    ],
)
def test_a_value_outside_its_shape_is_refused_before_anything_is_sent(name, value):
    with pytest.raises(ValueError, match="refusing to set"):
        set_local_sql({name: value}, citus=False)


@pytest.mark.django_db
def test_a_tenant_context_costs_one_statement_and_sets_every_setting(settings):
    settings.RLS_ENABLED = True
    org = OrganizationFactory()
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        context.set_connection_tenant(org.pk, user_id=42)
        assert len(queries) == 1
        assert queries[0]["sql"].startswith('SET LOCAL "app"."current_org"')
        assert _settings() == {
            "app.current_org": str(org.pk),
            "app.current_user": "42",
            "app.rls_enabled": "on",
            "app.cross_tenant": "",
            "citus.propagate_set_commands": None,
        }


@pytest.mark.django_db
def test_on_citus_the_same_round_trip_asks_citus_to_forward_the_settings(monkeypatch):
    monkeypatch.setattr(context, "uses_citus", lambda connection: True)
    org = OrganizationFactory()
    with CaptureQueriesContext(connection) as queries, tenant_context(org):
        sent = [q["sql"] for q in queries]
        current = _settings()
    assert len([s for s in sent if "SET LOCAL" in s]) == 1
    assert sent[-1].startswith("SET LOCAL citus.propagate_set_commands = 'local'; ")
    assert current["citus.propagate_set_commands"] == "local"
    assert current["app.current_org"] == str(org.pk)


@pytest.mark.django_db
def test_citus_is_detected_from_pg_extension_once_per_connection():
    assert citus.uses_citus(connection) is False  # plain PostgreSQL: no citus extension
    with CaptureQueriesContext(connection) as queries:
        assert citus.uses_citus(connection) is False
    assert len(queries) == 0  # answered from memory for this physical connection
    citus._detected.pop(connection.connection)
    with CaptureQueriesContext(connection) as queries:
        assert citus.uses_citus(connection) is False
    assert [q["sql"] for q in queries] == [citus._CITUS_INSTALLED]


@pytest.mark.django_db
def test_the_database_default_is_on_whatever_rls_enabled_says(settings):
    assert rls_database_default(connection) == "on"


@pytest.mark.django_db
@pytest.mark.parametrize("rls_enabled", [True, False])
def test_a_session_without_the_transactions_settings_sees_no_tenant_row(settings, rls_enabled):
    """What a Citus worker that the settings did not reach would run: the session's own
    defaults. With either RLS_ENABLED it is fail closed; a tenant context then applies
    RLS_ENABLED (off: every row, as the ORM filters alone decide)."""
    settings.RLS_ENABLED = rls_enabled
    a, b = OrganizationFactory(), OrganizationFactory()
    for org in (a, b):
        with tenant_context(org):
            ClientFactory(organization=org)
    with transaction.atomic(), connection.cursor() as cursor:
        for name in ("app.current_org", "app.rls_enabled", "app.cross_tenant"):
            cursor.execute(f"RESET {name}")  # back to the session's (database) default
        cursor.execute(
            "SELECT current_setting('app.rls_enabled', true), count(*) FROM cases_client"
        )
        assert cursor.fetchone() == ("on", 0)
    with tenant_context(a), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM cases_client")
        assert cursor.fetchone()[0] == (1 if rls_enabled else 2)
