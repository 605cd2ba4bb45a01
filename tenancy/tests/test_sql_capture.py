"""The SQL capture (``tenancy.tests.sql_capture``) can fail: the analysis tells a statement
inside one organization from one that is not, the wrapper on the suite's connections
catches an unscoped ORM query as it is sent, and a session that sent one exits 1 naming
the test and the statement."""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from django.db import connection

from cases.models import Case, Client
from cases.tests.factories import CaseFactory
from tenancy.context import tenant_context
from tenancy.tests import sql_capture
from tenancy.tests.dburl import subprocess_database_url
from tenancy.tests.sql_scope import to_postgres_sql, unscoped_tables

ROOT = Path(__file__).resolve().parents[2]
TENANT = frozenset({"cases_client", "cases_case", "cases_document", "tenancy_membership"})


def _unscoped(sql: str) -> set[str]:
    return set(unscoped_tables(to_postgres_sql(sql, ()), TENANT))


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT * FROM "cases_case" WHERE "cases_case"."organization_id" = %s',
        "SELECT * FROM cases_case c WHERE c.organization_id IN (%s, %s) AND c.id = %s",
        "SELECT * FROM cases_case WHERE organization_id = ANY(%s)",
        # a join inside one organization: the ON clause TenantForeignKey writes
        'SELECT * FROM "cases_case" INNER JOIN "cases_client" ON ("cases_case"."client_id" = '
        '"cases_client"."id" AND ("cases_case"."organization_id" = '
        '"cases_client"."organization_id")) WHERE "cases_case"."organization_id" = %s',
        # a subquery correlated to a scoped outer row
        "SELECT * FROM cases_client cl WHERE cl.organization_id = %s AND EXISTS (SELECT 1 FROM "
        "cases_case c WHERE c.organization_id = cl.organization_id AND c.client_id = cl.id)",
        "SELECT count(*) FROM (SELECT id FROM cases_case WHERE organization_id = %s) sub",
        "INSERT INTO cases_client (id, organization_id, name) VALUES (%s, %s, %s)",
        "INSERT INTO cases_client (id, organization_id) SELECT * FROM unnest(%b, %b)",
        "UPDATE cases_case SET title = %s WHERE organization_id = %s AND id = %s",
        "DELETE FROM cases_document WHERE case_id IN (%s) AND organization_id IN (%s)",
        "COPY cases_client (id, organization_id, name) FROM STDIN",
        "SELECT * FROM tenancy_organization WHERE id = %s",  # not a tenant table
        "SET LOCAL statement_timeout = '1s'",  # not a query
    ],
)
def test_statements_inside_one_organization_pass(sql):
    assert _unscoped(sql) == set()


@pytest.mark.parametrize(
    "sql, tables",
    [
        ("SELECT * FROM cases_case WHERE id = %s", {"cases_case"}),
        # the case list's former select_related("client"): the client side is not pinned
        (
            'SELECT * FROM "cases_case" INNER JOIN "cases_client" ON ("cases_case"."client_id" '
            '= "cases_client"."id") WHERE "cases_case"."organization_id" = %s',
            {"cases_client"},
        ),
        ("SELECT * FROM cases_case WHERE organization_id = %s OR id = %s", {"cases_case"}),
        ("SELECT * FROM cases_case WHERE NOT (organization_id <> %s)", {"cases_case"}),
        (
            "SELECT * FROM cases_client WHERE organization_id = %s AND id IN "
            "(SELECT client_id FROM cases_case WHERE title = %s)",
            {"cases_case"},
        ),
        (
            "SELECT * FROM cases_case WHERE organization_id IN "
            "(SELECT organization_id FROM tenancy_membership WHERE user_id = %s)",
            {"cases_case", "tenancy_membership"},
        ),
        ("INSERT INTO cases_client (id, name) VALUES (%s, %s)", {"cases_client"}),
        ("UPDATE cases_case SET title = %s WHERE id = %s", {"cases_case"}),
        ("DELETE FROM cases_document WHERE case_id IN (%s, %s)", {"cases_document"}),
        (
            "WITH recent AS (SELECT id FROM cases_case) SELECT * FROM recent",
            {"cases_case"},
        ),
        (
            "SELECT 1 FROM cases_case UNION SELECT 1 FROM cases_client WHERE organization_id = %s",
            {"cases_case"},
        ),
        ("COPY cases_client (id, name) FROM STDIN", {"cases_client"}),
    ],
)
def test_statements_that_reach_beyond_one_organization_are_caught(sql, tables):
    assert _unscoped(sql) == tables


def test_placeholders_of_django_and_psycopg_become_postgres_parameters():
    assert to_postgres_sql("a = %s AND b LIKE '%%x' AND c = %b AND d = %(n)s", ()) == (
        "a = $1 AND b LIKE '%x' AND c = $2 AND d = $3"
    )
    assert to_postgres_sql("LIKE '%s'", None) == "LIKE '%s'"  # no parameters: as sent


@pytest.mark.django_db
def test_the_wrapper_on_the_connection_catches_an_unscoped_orm_query(org, outsider_org):
    with tenant_context(org):
        case = CaseFactory(organization=org)
    with sql_capture.recording() as found:
        with tenant_context(org):
            assert Case.objects.for_organization(org).filter(pk=case.pk).exists()
            list(Case.objects.for_organization(org).select_related("client"))  # joins on org
        assert found == []
        with tenant_context(org):
            Client.objects.filter(name="nobody").count()
            connection.cursor().execute("SELECT count(*) FROM cases_case")
    assert [(f.test, f.tables) for f in found] == [
        (os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0], ("cases_client",)),
        (os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0], ("cases_case",)),
    ]
    assert 'FROM "cases_client" WHERE "cases_client"."name" = %s' in found[0].sql
    assert found[0].origin.endswith(
        "test_the_wrapper_on_the_connection_catches_an_unscoped_orm_query"
    )


def test_the_allow_list_names_every_path_and_why():
    names = [rule.name for rule in sql_capture.ALLOWED]
    assert len(names) == len(set(names))
    assert {"staff admin", "migrations", "test set-up under cross_tenant"} <= set(names)
    assert all(len(rule.why) > 30 for rule in sql_capture.ALLOWED)


BAD_TEST = """
import pytest
from django.db import connection


@pytest.mark.django_db
def test_sends_an_unscoped_query():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM cases_client WHERE name = %s", ["x"])


@pytest.mark.django_db
def test_sends_a_scoped_one():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM cases_client WHERE organization_id = %s", [None])
"""


@pytest.mark.django_db
def test_a_session_that_sent_an_unscoped_statement_fails_naming_test_and_sql(tmp_path):
    """A real pytest session (a subprocess with its own test database, built without
    migrations: the tables are all it needs) whose tests pass but one sent an unscoped
    statement: the run exits 1 and says which test sent what."""
    test_file = tmp_path / "test_bad_query.py"
    test_file.write_text(textwrap.dedent(BAD_TEST))
    # the test database is created by the owner; the tests log in as the app role
    (tmp_path / "conftest.py").write_text(
        "from tenancy.tests.db_setup import django_db_setup  # noqa: F401\n"
    )
    env = dict(
        os.environ,
        DATABASE_URL=subprocess_database_url(),
        TEST_DATABASE_NAME=f"test_gl_capture_{uuid.uuid4().hex[:8]}",
        PYTHONPATH=str(ROOT),
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("GOLDLEAVES_FAIL_ON_SKIP", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "tenancy.tests.sql_capture",
            "--ds",
            "goldleaves.settings_test",
            "--no-migrations",
            "-q",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert "2 passed" in output, output
    assert result.returncode == 1, output
    assert (
        "FAIL: test_bad_query.py::test_sends_an_unscoped_query: cases_client without "
        "organization_id" in output
    ), output
    assert "SELECT count(*) FROM cases_client WHERE name = %s" in output
    assert "test_sends_a_scoped_one" not in output.split("SQL capture:")[1]
