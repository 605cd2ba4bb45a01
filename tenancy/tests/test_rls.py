"""Row-level security: PostgreSQL itself refuses cross-tenant rows.

The suite connects as the app role (asserted below), so these tests exercise the
policies for real. The ``rls_on`` / ``rls_off`` fixtures pin ``RLS_ENABLED`` and the
transaction's ``app.rls_enabled`` so each test means the same whatever the
environment's ``RLS_ENABLED`` is.
"""

from datetime import timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import DataError, IntegrityError, ProgrammingError, connection, transaction
from django.utils import timezone

from billing.models import BillingEvent, IdempotencyKey, MeterReport, UsageAggregate
from cases.models import Case, Client, Document
from cases.tests.factories import CaseFactory, ClientFactory
from tenancy.context import cross_tenant, tenant_context
from tenancy.models import Invitation, Membership, Organization, User
from tenancy.rls import policies
from tenancy.rls.isolation import isolation_problems
from tenancy.testing import bearer_client
from tenancy.tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, member_of

TENANT_TABLES = [e.table for e in policies.tenant_tables(apps.get_models()) if not e.through_parent]
#: Every foreign key from a tenant table to another, as the migrations see them.
TENANT_FKS = [
    (e.table, column, target)
    for e in policies.tenant_tables(apps.get_models())
    for column, target in e.references
]


pytestmark = pytest.mark.rls_raw


def _set_rls(value: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.rls_enabled', %s, true)", [value])


@pytest.fixture
def rls_on(settings, db):
    settings.RLS_ENABLED = True
    _set_rls("on")


@pytest.fixture
def rls_off(settings, db):
    settings.RLS_ENABLED = False
    _set_rls("off")


def _populate(organization, user):
    with tenant_context(organization):
        case = CaseFactory(organization=organization)
        Document.objects.create(
            organization=organization, case=case, file="documents/t.pdf", original_filename="t.pdf"
        )
        report = MeterReport.objects.create(organization=organization, until=timezone.now())
        aggregate = UsageAggregate.objects.create(
            organization=organization,
            report=report,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=timezone.now().replace(minute=0, second=0, microsecond=0),
            value=1,
            identifier=f"gl-test-{organization.pk}",
        )
        BillingEvent.objects.create(
            organization=organization,
            user=user,
            event_type="api",
            event_name="api.request",
            usage_aggregate=aggregate,
        )
        IdempotencyKey.objects.create(
            organization=organization,
            key="same-key-in-both",
            user=user,
            fingerprint="0" * 64,
            method="POST",
            path="/api/v1/cases/",
            status_code=201,
            expires_at=timezone.now() + timedelta(hours=1),
        )
        Invitation.objects.create(
            organization=organization,
            email=f"invitee@{organization.slug}.test",
            invited_by=user,
            expires_at=timezone.now() + timedelta(hours=1),
        )
    return case


@pytest.fixture
def two_orgs(rls_on, org, outsider_org, owner, outsider):
    return {
        "a": (org, _populate(org, owner)),
        "b": (outsider_org, _populate(outsider_org, outsider)),
    }


def _count(table: str, where: str = "TRUE", params=()) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', list(params))
        return cursor.fetchone()[0]


def test_suite_runs_as_the_app_role_which_cannot_bypass_rls(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        role, is_super, bypass = cursor.fetchone()
    assert role == "goldleaves_app"
    assert not is_super and not bypass


def test_every_tenant_table_is_isolated_in_the_catalog(db):
    assert {"tenancy_membership", "cases_client", "cases_case", "cases_document"} <= set(
        TENANT_TABLES
    )
    assert "billing_events" in TENANT_TABLES
    assert "tenancy_user" not in TENANT_TABLES
    assert isolation_problems() == []


def test_check_isolation_command_passes(db, capsys, settings):
    call_command("check_isolation")
    out = capsys.readouterr().out
    if settings.RLS_ENABLED:
        assert "every tenant table is isolated (policies in place and enforced" in out
    else:
        assert "row-level security is NOT enforced: RLS_ENABLED=false" in out
        assert "is isolated" not in out


@pytest.mark.parametrize("enabled", [True, False])
def test_check_isolation_says_plainly_when_rls_is_not_enforced(db, capsys, settings, enabled):
    settings.RLS_ENABLED = enabled
    call_command("check_isolation")
    out = capsys.readouterr().out
    assert ("row-level security is NOT enforced: RLS_ENABLED=false" in out) is not enabled
    assert ("every tenant table is isolated" in out) is enabled


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_raw_select_under_a_context_returns_only_its_rows(two_orgs, table):
    org_a, _ = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    with cross_tenant(reason="test: both organizations have rows"):
        assert _count(table, "organization_id = %s", [org_b.pk]) > 0
    with tenant_context(org_a):
        assert _count(table, "organization_id = %s", [org_a.pk]) > 0
        assert _count(table, "organization_id <> %s", [org_a.pk]) == 0


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_raw_select_with_no_context_returns_nothing(two_orgs, table):
    assert _count(table) == 0


def test_insert_of_another_organizations_row_is_refused(two_orgs):
    org_a, _ = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    with tenant_context(org_a):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO cases_client (id, organization_id, name, email, phone, notes,"
                    " created_at) VALUES (gen_random_uuid(), %s, 'x', '', '', '', now())",
                    [org_b.pk],
                )
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic():
                Client.objects.create(organization=org_b, name="smuggled")


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_insert_of_another_organizations_row_is_refused_on_every_tenant_table(two_orgs, table):
    """A copy of a real B row (every column valid), inserted under A's context."""
    org_a, _ = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    with cross_tenant(reason="test: copy one of B's rows"), connection.cursor() as cursor:
        cursor.execute(
            f'CREATE TEMP TABLE smuggled AS SELECT * FROM "{table}" WHERE organization_id = %s'
            " LIMIT 1",
            [org_b.pk],
        )
        cursor.execute("SELECT count(*) FROM smuggled")
        assert cursor.fetchone()[0] == 1, f"the fixture has no {table} row of B"
    with tenant_context(org_a):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f'INSERT INTO "{table}" SELECT * FROM smuggled')


def test_insert_with_no_context_is_refused(two_orgs):
    org_a, _ = two_orgs["a"]
    with pytest.raises(ProgrammingError, match="row-level security"):
        with transaction.atomic():
            Client.objects.create(organization=org_a, name="no context")


def test_update_cannot_move_a_row_to_another_organization(two_orgs):
    org_a, case_a = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    with tenant_context(org_a):
        with pytest.raises(ProgrammingError, match="row-level security"):
            with transaction.atomic():
                Client.objects.filter(pk=case_a.client_id).update(organization=org_b)
        # Another organization's rows are invisible to UPDATE and DELETE: 0 rows touched.
        assert Client.objects.filter(organization=org_b).update(name="hijacked") == 0
        assert Case.objects.filter(organization=org_b).delete()[0] == 0


def test_orm_without_the_tenant_filter_still_sees_only_its_rows(two_orgs):
    org_a, case_a = two_orgs["a"]
    with tenant_context(org_a):
        assert list(Case.objects.all()) == [case_a]  # no .for_organization()
        assert {c.organization_id for c in Client.objects.all()} == {org_a.pk}
        assert set(BillingEvent.objects.values_list("organization_id", flat=True)) == {org_a.pk}
    assert Case.objects.count() == 0  # no context at all


def test_api_with_the_tenant_filter_removed_still_sees_only_its_rows(two_orgs, monkeypatch, owner):
    from tenancy.viewsets import TenantModelViewSet

    org_a, case_a = two_orgs["a"]
    # The bug this layer exists for: a view that forgets the organization filter.
    monkeypatch.setattr(TenantModelViewSet, "get_queryset", lambda self: self.model.objects.all())
    from cases.apis import CaseViewSet

    monkeypatch.setattr(CaseViewSet, "model", Case, raising=False)
    response = bearer_client(owner).get("/api/v1/cases/")
    assert response.status_code == 200, response.content
    assert [row["id"] for row in response.json()["results"]] == [str(case_a.pk)]


def test_rls_disabled_policies_exist_but_do_not_restrict(rls_off, org, outsider_org, owner):
    _populate(org, owner)
    _populate(outsider_org, owner)
    assert Case.objects.count() == 2
    with tenant_context(org):
        assert Case.objects.count() == 2  # RLS_ENABLED=false: not restricted
    assert isolation_problems(connection.alias) in (
        [],
        # the database default follows the environment's RLS_ENABLED, not this fixture
        [p for p in isolation_problems(connection.alias) if "database default" in p],
    )


def test_a_case_cannot_reference_another_organizations_client(two_orgs):
    """The composite (organization_id, client_id) foreign key, checked even cross-tenant."""
    org_a, _ = two_orgs["a"]
    _, case_b = two_orgs["b"]
    with pytest.raises(IntegrityError, match="same_org_fk"):
        with cross_tenant(reason="test: try to link across organizations"):
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            Case.objects.create(
                organization=org_a, client_id=case_b.client_id, title="x", reference_number="X-1"
            )


@pytest.mark.parametrize(("table", "column", "target"), TENANT_FKS)
def test_no_tenant_foreign_key_can_point_into_another_organization(two_orgs, table, column, target):
    """Every tenant -> tenant FK: point one of A's rows at one of B's rows, through the
    cross-tenant path (RLS admits both): the composite same-organization FK refuses."""
    assert len(TENANT_FKS) >= 4  # case->client, document->case, event->aggregate, ...
    org_a, _ = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    with pytest.raises(IntegrityError, match=policies.same_org_fk_name(table, column)):
        with cross_tenant(reason="test: try to link across organizations"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(
                    f'UPDATE "{table}" SET "{column}" = (SELECT id FROM "{target}" WHERE '
                    f'organization_id = %s LIMIT 1) WHERE id = (SELECT id FROM "{table}" '
                    "WHERE organization_id = %s LIMIT 1)",
                    [org_b.pk, org_a.pk],
                )
                assert cursor.rowcount == 1, f"the fixture has no {table} row of A"


def test_reference_numbers_are_unique_per_organization_only(two_orgs):
    org_a, case_a = two_orgs["a"]
    org_b, case_b = two_orgs["b"]
    with tenant_context(org_b):
        Case.objects.create(
            organization=org_b,
            client_id=case_b.client_id,
            title="same ref",
            reference_number=case_a.reference_number,
        )
        with pytest.raises(IntegrityError):
            with transaction.atomic():
                Case.objects.create(
                    organization=org_b,
                    client_id=case_b.client_id,
                    title="dup",
                    reference_number=case_a.reference_number,
                )


def test_cleared_setting_reads_as_empty_and_matches_nothing(two_orgs):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.current_org', '', true)")
        cursor.execute("SELECT count(*) FROM cases_case")
        assert cursor.fetchone()[0] == 0


def test_garbage_org_setting_is_an_error_not_a_leak(two_orgs):
    with pytest.raises(DataError):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.current_org', 'not-a-uuid', true)")
            cursor.execute("SELECT count(*) FROM cases_case")


def test_membership_list_shows_all_of_the_callers_organizations(two_orgs, owner):
    org_a, _ = two_orgs["a"]
    org_b, _ = two_orgs["b"]
    MembershipFactory(organization=org_b, user=owner, role="member")
    response = bearer_client(owner).get("/api/v1/organizations/")
    assert response.status_code == 200, response.content
    slugs = sorted(row["organization"]["slug"] for row in response.json()["results"])
    assert slugs == sorted([org_a.slug, org_b.slug])
    # ... but not other users' memberships of org B.
    with tenant_context(org_b):
        assert Membership.objects.count() == 2


def test_token_endpoint_picks_a_membership_organization_under_rls(rls_on, outsider_org):
    user = User.objects.create_user(email="nodefault@example.test", password=PASSWORD)
    MembershipFactory(organization=outsider_org, user=user)
    response = bearer_client(user).get("/api/v1/organizations/current/")
    assert response.status_code == 200, response.content
    assert response.json()["slug"] == outsider_org.slug
    from rest_framework.test import APIClient

    token = APIClient().post(
        "/api/v1/auth/token/", {"email": user.email, "password": PASSWORD}, format="json"
    )
    assert token.status_code == 200, token.content


def test_outsider_gets_404_for_a_case_of_another_organization(two_orgs, outsider):
    _, case_a = two_orgs["a"]
    response = bearer_client(outsider).get(f"/api/v1/cases/{case_a.pk}/")
    assert response.status_code == 404


def test_admin_lists_every_organizations_cases_through_cross_tenant(two_orgs, client):
    _, case_a = two_orgs["a"]
    _, case_b = two_orgs["b"]
    admin = User.objects.create_superuser(email="staff@goldleaves.test", password=PASSWORD)
    client.force_login(admin)
    response = client.get("/admin/cases/case/")
    assert response.status_code == 200
    body = response.content.decode()
    assert case_a.reference_number in body and case_b.reference_number in body
    response = client.get(f"/admin/tenancy/organization/{two_orgs['b'][0].pk}/change/")
    assert response.status_code == 200


def test_anonymous_admin_gets_the_login_page_without_cross_tenant(two_orgs, client):
    response = client.get("/admin/cases/case/")
    assert response.status_code == 302


def test_onboard_and_setup_demo_work_under_rls(rls_on, capsys):
    call_command("onboard_tenant", name="Rls Firm", owner_email="boss@rls.test")
    call_command("setup_demo")
    org = Organization.objects.get(slug="rls-firm")
    with tenant_context(org):
        assert Membership.objects.get().user.email == "boss@rls.test"
    call_command("onboard_tenant", name="Rls Firm", owner_email="boss@rls.test")
    assert "unchanged" in capsys.readouterr().out


def test_factories_and_member_of_work_under_rls(rls_on, org):
    user = member_of(org, email="m@acme.test")
    client = ClientFactory(organization=org)
    with tenant_context(org):
        assert Membership.objects.filter(user=user).exists()
        assert Client.objects.get() == client
    assert OrganizationFactory().pk
