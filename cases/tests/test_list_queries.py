"""The case and document lists read one tenant table each: no join (the serializers show
the client and the case by id), and a query count that does not grow with the rows."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cases.models import Document
from cases.tests.factories import CaseFactory

pytestmark = pytest.mark.django_db


def _list(api, path: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(path)
    assert response.status_code == 200, response.content
    return response.json()["count"], [q["sql"] for q in ctx.captured_queries]


def _rows(org, n: int) -> None:
    for _ in range(n):
        case = CaseFactory(organization=org)
        Document.objects.create(organization=org, case=case, file="f", original_filename="f")


@pytest.mark.parametrize(
    "path, table, other",
    [
        ("/api/v1/cases/", "cases_case", "cases_client"),
        ("/api/v1/documents/", "cases_document", "cases_case"),
    ],
)
def test_a_list_reads_its_own_table_only_and_in_constant_queries(api, org, path, table, other):
    _rows(org, 1)
    count, one = _list(api, path)
    assert count == 1
    _rows(org, 4)
    count, five = _list(api, path)
    assert count == 5
    assert len(five) == len(one)
    reads = [sql for sql in five if f'FROM "{table}"' in sql]
    assert reads and not [sql for sql in reads if "JOIN" in sql]
    assert not [sql for sql in five if f'"{other}"' in sql]
