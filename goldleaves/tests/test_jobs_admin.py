"""Staff see background jobs in the admin: procrastinate's own screens, read-only."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from procrastinate.contrib.django.models import ProcrastinateJob

from cases import services
from cases.tests.factories import CaseFactory
from tenancy.context import tenant_context
from tenancy.models import User
from tenancy.tests.factories import member_of

pytestmark = [pytest.mark.django_db, pytest.mark.rls_raw]

JOBS = "/admin/procrastinate/procrastinatejob/"


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser(email="admin@goldleaves.test", password="pw-123456789")
    client.force_login(user)
    return client


@pytest.fixture
def job(org, owner, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    with tenant_context(org):
        document = services.document_create(
            organization=org,
            acting_user=owner,
            case=CaseFactory(organization=org),
            file=SimpleUploadedFile("brief.txt", b"text\n", "text/plain"),
            request_id=None,
        )
    return ProcrastinateJob.objects.get(args__document_id=str(document.pk))


def test_staff_see_the_jobs_list_and_a_job(staff_client, job):
    listing = staff_client.get(JOBS)
    assert listing.status_code == 200
    assert "process_document" in listing.content.decode()
    assert str(job.args["document_id"]) in listing.content.decode()
    filtered = staff_client.get(JOBS, {"status__exact": "todo", "queue_name": "documents"})
    assert filtered.status_code == 200 and str(job.pk) in filtered.content.decode()
    detail = staff_client.get(f"{JOBS}{job.pk}/change/")
    assert detail.status_code == 200
    page = detail.content.decode()
    assert "documents" in page  # the queue, shown read-only
    assert "deferred" in page  # its events, inline


def test_the_jobs_admin_is_read_only(staff_client, job):
    assert staff_client.get(f"{JOBS}add/").status_code == 403
    assert staff_client.post(f"{JOBS}{job.pk}/change/", {"queue_name": "other"}).status_code == 403
    assert staff_client.post(f"{JOBS}{job.pk}/delete/", {"post": "yes"}).status_code == 403
    job.refresh_from_db()
    assert (job.queue_name, job.status) == ("documents", "todo")


def test_members_who_are_not_staff_cannot_open_it(client, org, job):
    client.force_login(member_of(org, email="member@acme.test"))
    response = client.get(JOBS)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
