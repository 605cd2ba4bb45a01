"""Audited staff access (``tenancy.audit``): every admin request of a staff user, made under
``cross_tenant``, writes one append-only ``StaffAccess`` row in its transaction; the
database refuses to update or delete one; the log has a read-only admin page."""

import logging

import pytest
from django.db import DatabaseError, connection, transaction

from cases.models import Client
from cases.tests.factories import ClientFactory
from tenancy.context import cross_tenant
from tenancy.models import StaffAccess, User
from tenancy.tests.dburl import owner_psycopg_connection
from tenancy.tests.factories import PASSWORD, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser(email="staff@goldleaves.test", password=PASSWORD)
    client.force_login(user)
    return user


@pytest.fixture
def clients(org, outsider_org):
    return {
        "ours": ClientFactory(organization=org, name="Ours", notes="our private notes"),
        "theirs": ClientFactory(organization=outsider_org, name="Theirs", notes="secret notes"),
    }


def _rows(user=None):
    """This test's rows (of ``user``, default the staff fixture's ``staff@goldleaves.test``):
    rows committed by other tests (a live server's) stay, since nothing may delete them."""
    user = user or User.objects.get(email="staff@goldleaves.test")
    return list(StaffAccess.objects.filter(staff_user_id=user.pk).order_by("id"))


def test_a_list_page_records_the_rows_and_organizations_it_showed(staff, clients, client):
    response = client.get("/admin/cases/client/")
    assert response.status_code == 200
    [row] = _rows()
    assert (row.staff_user_id, row.staff_email) == (staff.pk, staff.email)
    assert (row.action, row.model, row.method, row.status_code) == (
        "view_list",
        "cases.client",
        "GET",
        200,
    )
    assert set(row.object_ids) == {str(c.pk) for c in clients.values()}
    assert set(row.organization_ids) == {c.organization_id for c in clients.values()}
    assert row.request_id == response["X-Server-Request-ID"]
    assert row.reason == "django admin"
    assert row.created_at is not None


def test_reading_another_firms_private_notes_leaves_a_row(staff, clients, client, outsider_org):
    theirs = clients["theirs"]
    response = client.get(f"/admin/cases/client/{theirs.pk}/change/")
    assert response.status_code == 200 and "secret notes" in response.content.decode()
    [row] = _rows()
    assert (row.action, row.model, row.object_id) == ("view_object", "cases.client", str(theirs.pk))
    assert row.organization_ids == [outsider_org.pk]


def test_a_change_and_a_delete_are_recorded_with_the_organization(staff, clients, client, org):
    ours = clients["ours"]
    change = client.post(
        f"/admin/cases/client/{ours.pk}/change/",
        {"name": "Renamed", "email": "", "phone": "", "notes": "", "organization": org.pk},
    )
    assert change.status_code in (200, 302)
    delete = client.post(f"/admin/cases/client/{ours.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 302
    assert not Client.objects.filter(pk=ours.pk).exists()
    rows = _rows()
    assert [(r.action, r.object_id) for r in rows] == [
        ("change", str(ours.pk)),
        ("delete", str(ours.pk)),
    ]
    # read before the view ran: the deleted client's organization is still named
    assert all(r.organization_ids == [org.pk] for r in rows)


def test_a_bulk_delete_action_records_every_selected_object(staff, clients, client):
    ids = [str(c.pk) for c in clients.values()]
    data = {"action": "delete_selected", "_selected_action": ids}
    confirm = client.post("/admin/cases/client/", data)
    assert confirm.status_code == 200  # the confirmation page
    done = client.post("/admin/cases/client/", {**data, "post": "yes"})
    assert done.status_code == 302
    confirm_row, delete_row = _rows()
    assert confirm_row.action == "view_list" and delete_row.action == "delete"
    assert sorted(delete_row.object_ids) == sorted(ids)
    assert set(delete_row.organization_ids) == {c.organization_id for c in clients.values()}


def test_other_admin_pages_are_recorded_too(staff, client):
    assert client.get("/admin/").status_code == 200
    [row] = _rows()
    assert (row.action, row.model, row.path) == ("other", "", "/admin/")


def test_a_member_and_an_anonymous_visitor_leave_no_row(client, org):
    before = StaffAccess.objects.count()
    assert client.get("/admin/cases/client/").status_code == 302  # the login page
    member = member_of(org, email="member@acme.test")
    client.force_login(member)
    assert client.get("/admin/cases/client/").status_code == 302
    assert _rows(member) == []
    assert StaffAccess.objects.count() == before


def test_the_reason_of_cross_tenant_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="tenancy.context"):
        with cross_tenant(reason="quarterly usage audit"):
            pass
    assert "quarterly usage audit" in caplog.text


def _one_row(staff) -> StaffAccess:
    return StaffAccess.objects.create(
        staff_user_id=staff.pk,
        staff_email=staff.email,
        action="view_list",
        method="GET",
        path="/admin/",
        reason="test",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE tenancy_staffaccess SET action = 'other' WHERE id = %s",
        "DELETE FROM tenancy_staffaccess WHERE id = %s",
    ],
)
def test_the_database_refuses_to_update_or_delete_a_row_as_the_app(staff, sql):
    row = _one_row(staff)
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [row.pk])
    assert StaffAccess.objects.get(pk=row.pk).action == "view_list"


def test_the_orm_cannot_delete_rows_either(staff):
    _one_row(staff)
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic():
            StaffAccess.objects.filter(staff_user_id=staff.pk).delete()
    assert len(_rows(staff)) == 1


@pytest.mark.django_db(transaction=True)
def test_even_the_owner_cannot_update_or_delete_a_committed_row():
    staff = User.objects.create_superuser(email="root@goldleaves.test", password=PASSWORD)
    row = _one_row(staff)
    with owner_psycopg_connection() as owner:
        for sql in (
            "UPDATE tenancy_staffaccess SET reason = 'x' WHERE id = %s",
            "DELETE FROM tenancy_staffaccess WHERE id = %s",
        ):
            with pytest.raises(Exception, match="append-only"):
                owner.execute(sql, [row.pk])
    assert StaffAccess.objects.get(pk=row.pk).reason == "test"


def test_the_log_page_lists_and_filters_and_is_read_only(staff, clients, client, outsider_org):
    client.get(f"/admin/cases/client/{clients['theirs'].pk}/change/")
    listing = client.get("/admin/tenancy/staffaccess/")
    assert listing.status_code == 200
    assert "view_object" in listing.content.decode() or "view object" in listing.content.decode()
    filtered = client.get(
        "/admin/tenancy/staffaccess/",
        {"organization": str(outsider_org.pk), "action": "view_object"},
    )
    assert filtered.status_code == 200
    assert len(filtered.context["cl"].result_list) == 1
    empty = client.get(
        "/admin/tenancy/staffaccess/", {"action": "delete", "staff_email": staff.email}
    )
    assert len(empty.context["cl"].result_list) == 0
    row = StaffAccess.objects.filter(action="view_object").get()
    assert client.get("/admin/tenancy/staffaccess/add/").status_code == 403
    assert (
        client.post(f"/admin/tenancy/staffaccess/{row.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    detail = client.post(f"/admin/tenancy/staffaccess/{row.pk}/change/", {"reason": "edited"})
    assert detail.status_code == 403
    assert StaffAccess.objects.get(pk=row.pk).reason == "django admin"
