"""The tenant context never outlives its block or its request on the database
connection (transaction-local SET LOCAL); Python holds no ambient copy of it (the
organization is passed explicitly, see ``tenancy.context``).

These tests use ``transaction=True`` so that no test-wide transaction hides a leak:
the connection below is the same persistent connection the requests used
(Django's test client keeps it open between requests, like ``CONN_MAX_AGE > 0``).
"""

import pytest
from django.db import connection, transaction

from cases.tests.factories import CaseFactory
from tenancy.context import cross_tenant, set_connection_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.factories import OrganizationFactory, member_of


def db_org_setting() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('app.current_org', true), pg_backend_pid()")
        value, pid = cursor.fetchone()
    return value or None, pid


@pytest.mark.django_db(transaction=True)
def test_context_sets_the_connection_setting_and_resets_it():
    org = OrganizationFactory()
    assert db_org_setting()[0] is None
    with tenant_context(org) as bound:
        assert bound == org
        assert db_org_setting()[0] == str(org.pk)
    assert db_org_setting()[0] is None


@pytest.mark.django_db(transaction=True)
def test_context_is_reset_after_an_exception():
    org = OrganizationFactory()
    with pytest.raises(RuntimeError), tenant_context(org):
        raise RuntimeError("boom")
    assert db_org_setting()[0] is None


@pytest.mark.django_db(transaction=True)
def test_nested_contexts_restore_the_outer_organization():
    a, b = OrganizationFactory(), OrganizationFactory()
    with tenant_context(a):
        with tenant_context(b):
            assert db_org_setting()[0] == str(b.pk)
        assert db_org_setting()[0] == str(a.pk)
    assert db_org_setting()[0] is None


@pytest.mark.django_db(transaction=True)
def test_savepoint_rollback_inside_the_context_keeps_the_organization():
    org = OrganizationFactory()
    with tenant_context(org):
        try:
            with transaction.atomic():
                raise ValueError("rolled back to the savepoint")
        except ValueError:
            pass
        assert db_org_setting()[0] == str(org.pk)


@pytest.mark.django_db(transaction=True)
def test_set_connection_tenant_needs_a_transaction():
    with pytest.raises(transaction.TransactionManagementError):
        set_connection_tenant(None)


@pytest.mark.django_db(transaction=True)
def test_requests_for_a_then_b_on_one_persistent_connection_never_see_the_previous_org():
    a, b = OrganizationFactory(), OrganizationFactory()
    client_a, client_b = bearer_client(member_of(a)), bearer_client(member_of(b))
    case_a = CaseFactory(organization=a)
    case_b = CaseFactory(organization=b)

    response = client_a.get("/api/v1/cases/")
    assert [c["id"] for c in response.json()["results"]] == [str(case_a.pk)]
    setting, pid = db_org_setting()
    assert setting is None

    response = client_b.get("/api/v1/cases/")
    assert [c["id"] for c in response.json()["results"]] == [str(case_b.pk)]
    setting, pid_after = db_org_setting()
    assert setting is None
    assert pid_after == pid  # the same backend served both requests


@pytest.mark.django_db(transaction=True)
def test_a_request_that_raised_leaves_no_organization_behind(monkeypatch):
    from cases import apis

    a = OrganizationFactory()
    client = bearer_client(member_of(a))
    client.raise_request_exception = False

    def boom(self, request, *args, **kwargs):
        # the tenant is set on the connection while the view runs ...
        assert db_org_setting()[0] == str(a.pk)
        raise RuntimeError("view failed")

    monkeypatch.setattr(apis.CaseViewSet, "list", boom)
    assert client.get("/api/v1/cases/").status_code == 500
    # ... and gone afterwards, on the same connection
    assert db_org_setting()[0] is None


@pytest.mark.django_db(transaction=True)
def test_a_5xx_response_rolls_back_the_requests_writes(monkeypatch):
    from cases import apis
    from cases.models import Client

    a = OrganizationFactory()
    client = bearer_client(member_of(a))
    client.raise_request_exception = False
    original = apis.ClientViewSet.perform_create

    def create_then_fail(self, serializer):
        original(self, serializer)
        raise RuntimeError("failed after the write")

    monkeypatch.setattr(apis.ClientViewSet, "perform_create", create_then_fail)
    response = client.post("/api/v1/clients/", {"name": "Ghost"}, format="json")
    assert response.status_code == 500
    with cross_tenant(reason="test assertion"):
        assert Client.objects.filter(organization=a).count() == 0
        # control: the same create without the failure does commit
        monkeypatch.setattr(apis.ClientViewSet, "perform_create", original)
    assert client.post("/api/v1/clients/", {"name": "Real"}, format="json").status_code == 201
    with cross_tenant(reason="test assertion"):
        assert list(Client.objects.filter(organization=a).values_list("name", flat=True)) == [
            "Real"
        ]
