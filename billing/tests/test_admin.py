from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import BillingEvent, UsageAggregate
from billing.reporting import reconciliation
from billing.reporting.identifiers import aggregate_identifier
from billing.tests.factories import BillingEventFactory, flat_prices
from tenancy.context import tenant_context
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
    since = (timezone.now() - timedelta(days=7)).replace(hour=0, minute=0, second=0)
    week = admin_client.get("/admin/billing/billingevent/", {"created_at__gte": str(since)})
    assert week.status_code == 200
    assert week.context["cl"].result_count == 2


def test_billing_event_admin_filters_by_event_name_from_a_fixed_list(admin_client, org, settings):
    """The event-name choices are the meters and the price book's names, and a page of the
    list reads billing_events twice (the paginator's count, the page): no SELECT DISTINCT
    over the table, for the name filter or a date hierarchy (each scans every event)."""
    settings.BILLING_PRICE_BOOK = {"api.request": 1, "zz.custom": 3}
    upload = BillingEventFactory(organization=org, event_name="doc.upload")
    BillingEventFactory(organization=org, event_name="api.request")
    with CaptureQueriesContext(connection) as ctx:
        page = admin_client.get("/admin/billing/billingevent/")
    assert page.status_code == 200
    spec = next(f for f in page.context["cl"].filter_specs if f.title == "event name")
    assert [value for value, _ in spec.lookup_choices] == [
        "api.request",
        "doc.upload",
        "doc.processed",
        "zz.custom",
    ]
    reads = [q["sql"] for q in ctx.captured_queries if 'FROM "billing_events"' in q["sql"]]
    assert len(reads) == 2  # the paginator's count, the page
    assert not [sql for sql in reads if "DISTINCT" in sql]
    filtered = admin_client.get("/admin/billing/billingevent/?event_name=doc.upload")
    assert list(filtered.context["cl"].result_list) == [upload]


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


def test_organization_admin_shows_current_period_usage(admin_client, org, outsider_org, settings):
    settings.BILLING_PLANS = flat_prices(settings.BILLING_PLANS, {"api.request": "4"})
    BillingEventFactory.create_batch(3, organization=org, unit_cost_cents=4)
    BillingEventFactory(organization=outsider_org, unit_cost_cents=98765)
    response = admin_client.get(f"/admin/tenancy/organization/{org.pk}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Current period usage" in content
    assert "<td>api.request</td><td>3 events</td><td>3</td><td>$0.12</td>" in content
    assert "<strong>$0.12</strong>" in content  # the total
    assert "98765" not in content and "987.65" not in content


# --- the Stripe outbox (UsageAggregate) and its actions -------------------------------------

HOUR = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def outbox_row(org, *, sequence, status, first_sent_hours_ago=None, events=1):
    """A ``UsageAggregate`` of ``org`` with ``events`` pending events linked to it."""
    first_sent_at = (
        None
        if first_sent_hours_ago is None
        else timezone.now() - timedelta(hours=first_sent_hours_ago)
    )
    with tenant_context(org):
        aggregate = UsageAggregate.objects.create(
            organization=org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            sequence=sequence,
            value=events,
            event_count=events,
            identifier=aggregate_identifier(org.pk, "api_requests", HOUR, sequence),
            status=status,
            attempts=3,
            key_revision=1,
            first_sent_at=first_sent_at,
        )
    BillingEventFactory.create_batch(events, organization=org, usage_aggregate=aggregate)
    return aggregate


def run_action(admin_client, action, *aggregates):
    return admin_client.post(
        "/admin/billing/usageaggregate/",
        {"action": action, "_selected_action": [str(a.pk) for a in aggregates]},
        follow=True,
    )


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_outbox_admin_lists_and_filters_needs_reconciliation(admin_client, org):
    flagged = outbox_row(org, sequence=1, status="needs_reconciliation", first_sent_hours_ago=30)
    outbox_row(org, sequence=2, status="sent", first_sent_hours_ago=30)
    listing = admin_client.get("/admin/billing/usageaggregate/?status=needs_reconciliation")
    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [flagged]
    assert admin_client.get("/admin/billing/meterreport/").status_code == 200
    # a single aggregate's page is read-only
    page = admin_client.get(f"/admin/billing/usageaggregate/{flagged.pk}/change/")
    assert page.status_code == 200
    assert 'name="value"' not in page.content.decode()


def test_retry_failed_queues_recent_failures_and_refuses_past_the_window(admin_client, org):
    never_sent = outbox_row(org, sequence=1, status="failed")  # e.g. a 35-day-old hour
    recent = outbox_row(org, sequence=2, status="failed", first_sent_hours_ago=2)
    too_old = outbox_row(org, sequence=3, status="failed", first_sent_hours_ago=23.5)
    sent = outbox_row(org, sequence=4, status="sent", first_sent_hours_ago=1)
    response = run_action(admin_client, "retry_failed", never_sent, recent, too_old, sent)
    assert response.status_code == 200
    text = " ".join(page_messages(response))
    assert "2 aggregate(s) queued" in text
    assert "about 24 hours" in text
    assert "1 aggregate(s) refused" in text
    assert too_old.identifier in text
    assert "Reconcile them against Stripe's meter event summaries" in text
    statuses = {a.pk: (a.status, a.attempts) for a in UsageAggregate.objects.all()}
    assert statuses == {
        never_sent.pk: ("pending", 0),
        recent.pk: ("pending", 0),
        too_old.pk: ("failed", 3),
        sent.pk: ("sent", 3),
    }


def test_requeue_failed_is_the_one_resend_rule(org, settings):
    """The service behind the "Retry" action, with the run's own window rule
    (``reconciliation.resend_cutoff``): queued within the window or never sent, refused past it."""
    settings.STRIPE_RESEND_WINDOW_HOURS = 5
    never_sent = outbox_row(org, sequence=1, status="failed")
    inside = outbox_row(org, sequence=2, status="failed", first_sent_hours_ago=4.9)
    past = outbox_row(org, sequence=3, status="failed", first_sent_hours_ago=5.1)
    pending = outbox_row(org, sequence=4, status="pending", first_sent_hours_ago=6)
    requeued, refused = reconciliation.aggregates_requeue_failed(
        aggregates=UsageAggregate.objects.all()
    )
    assert (requeued, refused) == (2, [past.identifier])
    statuses = dict(UsageAggregate.objects.values_list("pk", "status"))
    assert statuses == {
        never_sent.pk: "pending",
        inside.pk: "pending",
        past.pk: "failed",
        pending.pk: "pending",
    }
    # the same rule as a run's: past the window for aggregates_requeue_failed <=> for aggregate_send
    for aggregate in (inside, past):
        assert reconciliation.past_resend_window(aggregate) is (aggregate == past)


def test_reconciled_stripe_has_it_writes_no_intermediate_status(org):
    """Straight from needs_reconciliation to sent, in one conditional UPDATE of the
    aggregate (no temporary 'pending' that a concurrent run could pick up and resend)."""
    flagged = outbox_row(org, sequence=1, status="needs_reconciliation", first_sent_hours_ago=30)
    with CaptureQueriesContext(connection) as ctx:
        assert reconciliation.reconciliation_resolve(
            aggregate=flagged, stripe_has_it=True, by="ops"
        )
    updates = [
        q["sql"]
        for q in ctx.captured_queries
        if q["sql"].startswith('UPDATE "billing_usageaggregate"')
    ]
    assert len(updates) == 1, updates
    assert "'pending'" not in updates[0]
    flagged.refresh_from_db()
    assert flagged.status == "sent"
    assert set(flagged.events.values_list("status", flat=True)) == {1}


def test_retry_failed_window_is_the_setting(admin_client, org, settings):
    settings.STRIPE_RESEND_WINDOW_HOURS = 1
    failed = outbox_row(org, sequence=1, status="failed", first_sent_hours_ago=2)
    text = " ".join(page_messages(run_action(admin_client, "retry_failed", failed)))
    assert "first sent more than 1 h ago" in text
    failed.refresh_from_db()
    assert failed.status == "failed"


def test_reconciled_stripe_has_it_marks_sent_and_posts_the_events(admin_client, org):
    flagged = outbox_row(org, sequence=1, status="needs_reconciliation", first_sent_hours_ago=30)
    never_sent = outbox_row(org, sequence=2, status="failed")  # cannot be at Stripe
    response = run_action(admin_client, "reconciled_stripe_has_it", flagged, never_sent)
    text = " ".join(page_messages(response))
    assert "1 aggregate(s) reconciled" in text
    assert "1 aggregate(s) unchanged" in text
    flagged.refresh_from_db()
    assert flagged.status == "sent" and flagged.sent_at is not None
    assert "Stripe has it" in flagged.last_error
    assert set(flagged.events.values_list("status", flat=True)) == {1}
    never_sent.refresh_from_db()
    assert never_sent.status == "failed"
    assert set(never_sent.events.values_list("status", flat=True)) == {0}


def test_reconciled_stripe_lacks_it_queues_a_fresh_send(admin_client, org):
    flagged = outbox_row(org, sequence=1, status="needs_reconciliation", first_sent_hours_ago=30)
    run_action(admin_client, "reconciled_stripe_lacks_it", flagged)
    flagged.refresh_from_db()
    assert (flagged.status, flagged.attempts, flagged.first_sent_at) == ("pending", 0, None)
    assert flagged.key_revision == 2  # a key never used before
    assert flagged.identifier == aggregate_identifier(
        org.pk, "api_requests", HOUR, 1
    )  # same identifier
    assert set(flagged.events.values_list("status", flat=True)) == {0}


def test_outbox_actions_need_the_change_permission(client, org):
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_usageaggregate"))
    client.force_login(viewer)
    flagged = outbox_row(org, sequence=1, status="needs_reconciliation", first_sent_hours_ago=30)
    response = client.post(
        "/admin/billing/usageaggregate/",
        {"action": "reconciled_stripe_has_it", "_selected_action": [str(flagged.pk)]},
    )
    assert response.status_code in (200, 302)
    flagged.refresh_from_db()
    assert flagged.status == "needs_reconciliation"
