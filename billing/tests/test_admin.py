import pytest
from django.utils import timezone

from billing.models import BillingEvent
from billing.tests.factories import BillingEventFactory
from tenancy.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_billing_event_admin_lists_filters_and_searches(admin_client, org):
    event = BillingEventFactory(organization=org, request_id="find-me")
    BillingEventFactory(organization=org, request_id="other")
    response = admin_client.get("/admin/billing/billingevent/?q=find-me")
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
    assert list(response.context["cl"].result_list) == [event]
    filtered = admin_client.get(
        f"/admin/billing/billingevent/?organization__id__exact={org.pk}&status__exact=0"
    )
    assert filtered.status_code == 200
    assert filtered.context["cl"].result_count == 2
    assert (
        admin_client.get(
            f"/admin/billing/billingevent/?created_at__year={timezone.now().year}"
        ).status_code
        == 200
    )


def test_billing_event_admin_is_read_only(admin_client, org):
    event = BillingEventFactory(organization=org)
    assert admin_client.get("/admin/billing/billingevent/add/").status_code == 403
    detail = admin_client.get(f"/admin/billing/billingevent/{event.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert admin_client.post(f"/admin/billing/billingevent/{event.pk}/delete/").status_code == 403
    assert admin_client.post(
        "/admin/billing/billingevent/",
        {"action": "delete_selected", "_selected_action": [str(event.pk)]},
    ).status_code in (200, 302)
    assert BillingEvent.objects.filter(pk=event.pk).exists()


def test_organization_admin_shows_current_period_usage(admin_client, org, outsider_org):
    BillingEventFactory.create_batch(3, organization=org, unit_cost_cents=4)
    BillingEventFactory(organization=outsider_org, unit_cost_cents=98765)
    response = admin_client.get(f"/admin/tenancy/organization/{org.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Current period usage" in content
    assert "api.request: 3 events, quantity 3.0000, 12 cents" in content
    assert "total 12 cents" in content
    assert "98765" not in content
