"""Distributable keys: in the database every tenant table's primary key is
``(organization_id, id)`` and foreign keys between tenant tables are the composite ones;
Django keeps ``id`` and writes every statement for a row with its organization
(``TenantForeignKey`` joins and fetches, ``TenantModel`` saves, deletes and refreshes).
``check_isolation`` names a table that breaks the rule."""

import contextlib

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.models import CompositePrimaryKey, ProtectedError
from django.test.utils import CaptureQueriesContext

from billing.models import MeterReport, UsageAggregate
from cases.models import Case, Client, Document
from cases.tests.factories import CaseFactory, ClientFactory
from tenancy import keys
from tenancy.fields import TenantForeignKey
from tenancy.rls import policies
from tenancy.rls.isolation import isolation_problems
from tenancy.rls.roles import app_role, owner_alias
from tenancy.tests import sql_capture

ENTRIES = policies.tenant_tables(apps.get_models())
TENANT_TABLES = sorted(e.table for e in ENTRIES if not e.through_parent)


def expected_primary_key(table: str) -> tuple[str, ...]:
    """``(organization_id, id)``; for a model that declares Django's ``CompositePrimaryKey``
    (nothing references it, the admin does not show it), its own columns, which must
    start with ``organization_id``."""
    model = next(m for m in apps.get_models() if m._meta.db_table == table)
    pk = model._meta.pk
    if isinstance(pk, CompositePrimaryKey):
        columns = tuple(f.column for f in pk.fields)
        assert columns[0] == "organization_id", columns
        return columns
    return ("organization_id", "id")


@pytest.mark.django_db
@pytest.mark.parametrize("table", TENANT_TABLES)
def test_every_tenant_table_has_the_primary_key_organization_id_id(table):
    assert keys.primary_key_columns(connection, table) == expected_primary_key(table)


def test_every_foreign_key_between_tenant_models_is_a_tenant_foreign_key():
    tenant_models = {m for m in apps.get_models() if policies.is_tenant_model(m)}
    links = [
        (model, f)
        for model in tenant_models
        for f in model._meta.local_fields
        if f.is_relation and f.name != "organization" and f.related_model in tenant_models
    ]
    assert len(links) == 4  # case.client, document.case, aggregate.report, event.aggregate
    for model, f in links:
        assert isinstance(f, TenantForeignKey) and not f.db_constraint, (model, f.name)


@pytest.mark.django_db
def test_the_catalog_has_no_single_column_foreign_key_between_tenant_tables():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname, array_length(conkey, 1) FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid::regclass::text = ANY(%s)",
            [TENANT_TABLES],
        )
        rows = cursor.fetchall()
    assert rows and all(n == 2 for _, _, n in rows), rows


@pytest.fixture
def statements():
    """The SQL Django sends in the block, and what the SQL capture finds unscoped in it."""

    class Seen:
        def __enter__(self):
            self.capture = CaptureQueriesContext(connection).__enter__()
            self.recording = sql_capture.recording()
            self.unscoped = self.recording.__enter__()
            return self

        def __exit__(self, *exc):
            self.recording.__exit__(*exc)
            self.capture.__exit__(*exc)

        @property
        def sql(self):
            return [q["sql"] for q in self.capture.captured_queries]

    return Seen


@pytest.mark.django_db
def test_joins_and_lazy_fetches_over_a_tenant_foreign_key_carry_the_organization(org, statements):
    case = CaseFactory(organization=org)
    with statements() as seen:
        joined = Case.objects.for_organization(org).select_related("client").get(pk=case.pk)
        lazy = Case.objects.for_organization(org).get(pk=case.pk).client
        by_name = Case.objects.for_organization(org).filter(client__name=case.client.name)
        assert list(by_name) == [case]
    assert joined.client == lazy == case.client
    join_on = '"cases_case"."organization_id" = ("cases_client"."organization_id")'
    assert join_on in seen.sql[0] and join_on in seen.sql[-1]
    assert '"cases_client"."organization_id" = ' in seen.sql[2]  # case.client
    assert seen.unscoped == []


@pytest.mark.django_db
def test_save_and_refresh_name_the_organization_and_a_row_never_moves(
    org, outsider_org, statements
):
    client = ClientFactory(organization=org)
    with statements() as seen:
        client.name = "Renamed"
        client.save()
        client.refresh_from_db()
    assert seen.unscoped == [] and client.name == "Renamed"
    assert any(s.startswith('UPDATE "cases_client"') for s in seen.sql)
    client.organization = outsider_org
    with pytest.raises(ValueError, match="cannot move to another organization"):
        client.save()


@pytest.mark.django_db
def test_deletes_cascade_protect_and_set_null_inside_the_organization(org, statements):
    case = CaseFactory(organization=org)
    Document.objects.create(organization=org, case=case, file="f", original_filename="f.pdf")
    other = CaseFactory(organization=org)
    Document.objects.create(organization=org, case=other, file="g", original_filename="g.pdf")
    report = MeterReport.objects.create(organization=org, until="2026-01-01T00:00Z")
    aggregate = UsageAggregate.objects.create(
        organization=org,
        report=report,
        event_name="api.request",
        meter_event_name="api_requests",
        period_start="2026-01-01T00:00Z",
        value=1,
        identifier="gl-keys-test",
    )
    with statements() as seen:
        with pytest.raises(ProtectedError):
            case.client.delete()  # PROTECT: the client still has a case
        assert case.delete()[1] == {"cases.Document": 1, "cases.Case": 1}
        assert Case.objects.for_organization(org).filter(pk=other.pk).delete()[0] == 2
        report.delete()  # SET_NULL on the aggregate
    assert seen.unscoped == []
    assert Document.objects.for_organization(org).count() == 0
    aggregate.refresh_from_db()
    assert aggregate.report_id is None


@contextlib.contextmanager
def owner_ddl():
    """A cursor of a second connection logged in as the owner (``owner_alias``), in a
    transaction rolled back at the end: the test's own connection logs in as the app role
    and may not run DDL. Yields ``(cursor, alias)``; ``app_role(cursor)`` then makes the
    rest of that transaction run as the app role, seeing the DDL."""
    with owner_alias() as owner, transaction.atomic(using=owner.alias):
        with owner.cursor() as cursor:
            yield cursor, owner.alias
        transaction.set_rollback(True, using=owner.alias)


def as_app_role(cursor) -> None:
    cursor.execute(f'SET LOCAL ROLE "{app_role()}"')


@pytest.mark.django_db
def test_check_isolation_names_each_key_that_keeps_a_table_from_being_distributed():
    with owner_ddl() as (cursor, alias):
        cursor.execute("ALTER TABLE cases_document DROP CONSTRAINT cases_document_pkey")
        cursor.execute("ALTER TABLE cases_document ADD CONSTRAINT doc_id_pk PRIMARY KEY (id)")
        cursor.execute("CREATE UNIQUE INDEX case_id_only ON cases_case (id)")
        cursor.execute(
            "ALTER TABLE cases_document ADD CONSTRAINT doc_case_plain_fk "
            "FOREIGN KEY (case_id) REFERENCES cases_case (id)"
        )
        cursor.execute(
            "CREATE TABLE case_notes (id bigint PRIMARY KEY, org uuid, case_id uuid, "
            "CONSTRAINT notes_case_fk FOREIGN KEY (org, case_id) "
            "REFERENCES cases_case (organization_id, id))"
        )
        as_app_role(cursor)
        problems = isolation_problems(alias)
    expected = [
        "table cases_document: primary key (id) does not include organization_id "
        "(tenancy.keys.TenantPrimaryKeys)",
        "table cases_case: unique constraint case_id_only does not include organization_id",
        "table cases_document: foreign key doc_case_plain_fk (case_id) -> cases_case does not "
        "include organization_id (between tenant tables only the composite (organization_id, "
        "x_id) keys: tenancy.fields.TenantForeignKey)",
        "table case_notes: foreign key notes_case_fk (org, case_id) -> cases_case: only a "
        "tenant table may reference a tenant table",
    ]
    for line in expected:
        assert line in problems, problems


@pytest.mark.django_db
def test_check_isolation_fails_on_a_primary_key_without_organization_id(capsys):
    with owner_ddl() as (cursor, alias):
        cursor.execute("ALTER TABLE tenancy_membership DROP CONSTRAINT tenancy_membership_pkey")
        cursor.execute("ALTER TABLE tenancy_membership ADD PRIMARY KEY (id)")
        as_app_role(cursor)
        with pytest.raises(CommandError, match="problem"):
            call_command("check_isolation", "--database", alias)
    assert "table tenancy_membership: primary key (id) does not include" in capsys.readouterr().err


def test_clients_and_cases_models_keep_id_as_django_primary_key():
    assert Client._meta.pk.name == Case._meta.pk.name == "id"
