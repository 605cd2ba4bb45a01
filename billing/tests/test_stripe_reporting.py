"""Usage reporting to Stripe, with HTTP intercepted at stripe-python's client (``responses``
patches the ``requests`` library that ``stripe.RequestsClient`` uses).

``FakeStripe`` behaves like Stripe's meter-event endpoint: it saves the answer of each
``Idempotency-Key`` (a 500 included) and replays it for the same key; it rejects a create
whose ``identifier`` it already holds, as Stripe does. It never hides a duplicate: every
request that Stripe would process as a new create is recorded in ``creates`` (duplicates
included), so the tests assert how many creates each identifier got.
"""

import importlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from urllib.parse import parse_qs

import psycopg
import pytest
import requests
import responses
import stripe
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import ProtectedError
from django.utils import timezone

from billing import reporting
from billing.models import (
    BillingEvent,
    BillingEventStatus,
    MeterReport,
    MeterReportStatus,
    UsageAggregate,
    UsageAggregateStatus,
)
from billing.services import record_event, record_events
from core.testing import race_second_behind_first
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client
from tenancy.tests.factories import member_of

METER_URL = "https://api.stripe.com/v1/billing/meter_events"
HOUR = (
    (timezone.now() - timedelta(days=2)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
)


@dataclass
class Fail:
    """A planned Stripe error answer. ``recorded``: Stripe wrote the meter event before
    failing (an ambiguous 500). ``saved``: stored under the Idempotency-Key and replayed
    (Stripe saves every answer of a request that started executing; not a 409 conflict
    or a 429 rate limit, which are refused before)."""

    status: int
    headers: dict = field(default_factory=dict)
    recorded: bool = False
    error_type: str = "api_error"

    @property
    def saved(self) -> bool:
        return self.status not in (409, 429)


@dataclass
class Lost:
    """The request never reached Stripe (e.g. a connect timeout): nothing processed or saved."""

    exc: Exception


class FakeStripe:
    """Stripe's ``POST /v1/billing/meter_events``.

    ``plan``: one action per call, in order (then success): ``None`` (success), an int or
    ``Fail`` (an error answer), an exception (Stripe received and recorded the event, then
    the answer was lost: a read timeout), or ``Lost`` (never received).

    ``requests``: every request as sent. ``creates``: every request processed as a new
    create (not an idempotent replay), with ``duplicate`` True when Stripe rejected it
    because it already held the identifier. ``counted()``: what Stripe's meter sums.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.creates: list[dict] = []
        self.saved: dict[str, tuple] = {}  # Idempotency-Key -> (form, answer)
        self.plan: list = []

    def __call__(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        key = request.headers.get("Idempotency-Key")
        self.requests.append(
            {
                "event_name": form["event_name"],
                "identifier": form["identifier"],
                "timestamp": int(form["timestamp"]),
                "customer": form["payload[stripe_customer_id]"],
                "value": form["payload[value]"],
                "idempotency_key": key,
            }
        )
        if key in self.saved:  # Stripe replays the saved answer, whatever it was
            saved_form, (status, headers, body) = self.saved[key]
            if saved_form != form:
                return self._error(400, "idempotency_error", "Keys for idempotent requests...")
            return (status, {**headers, "Idempotent-Replayed": "true"}, body)
        action = self.plan.pop(0) if self.plan else None
        if isinstance(action, Lost):
            raise action.exc
        if isinstance(action, int):
            action = Fail(action)
        answer, saved = self._process(form, action)
        if saved:
            self.saved[key] = (form, answer)
        if isinstance(action, Exception):
            raise action  # received and recorded; the answer never arrives
        return answer

    def _process(self, form, action):
        identifier = form["identifier"]
        if isinstance(action, Fail) and not action.recorded:
            message = f"planned {action.status}"
            return self._error(action.status, action.error_type, message, action.headers), (
                action.saved
            )
        duplicate = any(c["identifier"] == identifier and not c["duplicate"] for c in self.creates)
        self.creates.append(
            {"identifier": identifier, "value": form["payload[value]"], "duplicate": duplicate}
        )
        if duplicate:
            message = f"An event already exists with identifier {identifier}."
            headers = {"Stripe-Should-Retry": "false"}
            return self._error(400, "invalid_request_error", message, headers), True
        if isinstance(action, Fail):  # recorded, then failed
            return self._error(action.status, action.error_type, "after write", action.headers), (
                True
            )
        return (200, {}, json.dumps({"object": "billing.meter_event", **form})), True

    @staticmethod
    def _error(status, error_type, message, headers=None):
        body = json.dumps({"error": {"type": error_type, "message": message}})
        return (status, dict(headers or {}), body)

    def identifiers(self):
        return [r["identifier"] for r in self.requests]

    def keys(self):
        return [r["idempotency_key"] for r in self.requests]

    def created_identifiers(self):
        """Identifiers of every new create, duplicates included (no dedup here)."""
        return [c["identifier"] for c in self.creates]

    def counted(self) -> dict[str, Decimal]:
        """Stripe's meter: the value of each identifier it accepted."""
        counted: dict[str, Decimal] = {}
        for create in self.creates:
            if not create["duplicate"]:
                counted[create["identifier"]] = counted.get(
                    create["identifier"], Decimal(0)
                ) + Decimal(create["value"])
        return counted


@pytest.fixture
def stripe_settings(settings):
    settings.STRIPE_API_KEY = "sk_test_goldleaves"
    settings.STRIPE_METERS = {"api.request": "api_requests", "doc.upload": "documents"}
    settings.STRIPE_MAX_ATTEMPTS = 3
    settings.STRIPE_RETRY_BACKOFF_SECONDS = 0
    return settings


@pytest.fixture
def fake_stripe(stripe_settings):
    fake = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, METER_URL, callback=fake)
        yield fake


@pytest.fixture
def customer_org(org):
    org.stripe_customer_id = "cus_acme"
    org.save(update_fields=["stripe_customer_id"])
    return org


def add_events(org, specs):
    """``specs``: (event_name, hour offset from HOUR, minute, quantity)."""
    with tenant_context(org):
        for i, (name, hours, minute, quantity) in enumerate(specs):
            record_event(
                organization=org,
                event_name=name,
                quantity=Decimal(quantity),
                request_id=f"{name}-{hours}-{minute}-{i}-{timezone.now().timestamp()}",
                created_at=HOUR + timedelta(hours=hours, minutes=minute),
            )


def ident(org, meter, hours, seq=1):
    return reporting.aggregate_identifier(org.pk, meter, HOUR + timedelta(hours=hours), seq)


def sent(org, meter, hours, value, *, seq=1, key=None):
    """The exact request expected for one meter event (``key``: the Idempotency-Key,
    by default the identifier)."""
    identifier = ident(org, meter, hours, seq)
    return {
        "event_name": meter,
        "identifier": identifier,
        "timestamp": int((HOUR + timedelta(hours=hours)).timestamp()),
        "customer": "cus_acme",
        "value": value,
        "idempotency_key": key or identifier,
    }


def test_full_run_sends_one_meter_event_per_org_meter_hour(fake_stripe, customer_org):
    add_events(
        customer_org,
        [
            ("api.request", 0, 5, "1"),
            ("api.request", 0, 50, "1"),
            ("api.request", 1, 10, "1"),
            ("doc.upload", 0, 20, "2.5"),
            ("doc.processed", 0, 30, "7"),  # no Stripe meter: stays pending, never sent
        ],
    )
    result = reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "2"),
        sent(customer_org, "documents", 0, "2.5"),
        sent(customer_org, "api_requests", 1, "1"),
    ]
    created = fake_stripe.created_identifiers()
    assert len(created) == len(set(created)) == 3  # three creates, three distinct identifiers
    assert fake_stripe.counted() == {
        ident(customer_org, "api_requests", 0): Decimal("2"),
        ident(customer_org, "documents", 0): Decimal("2.5"),
        ident(customer_org, "api_requests", 1): Decimal("1"),
    }
    report = result.report
    assert (report.status, report.aggregates_sent, report.events_posted) == ("succeeded", 3, 4)
    statuses = dict(BillingEvent.objects.values_list("event_name", "status").distinct())
    assert statuses == {"api.request": 1, "doc.upload": 1, "doc.processed": 0}
    assert set(UsageAggregate.objects.values_list("status", flat=True)) == {"sent"}
    assert not UsageAggregate.objects.filter(first_sent_at=None).exists()
    # a second run has nothing to send
    again = reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 3
    assert again.report.aggregates_created == 0


def test_a_500_is_retried_with_the_same_identifier_and_a_new_key(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500]
    result = reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    # Stripe saved the 500 under the first key: the same key would only replay it.
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "1"),
        sent(customer_org, "api_requests", 0, "1", key=f"{expected}-r1"),
    ]
    assert fake_stripe.created_identifiers() == [expected]  # one create in all
    assert fake_stripe.counted() == {expected: Decimal("1")}
    assert result.report.status == MeterReportStatus.SUCCEEDED
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("sent", 2, 1)
    assert BillingEvent.objects.get().status == BillingEventStatus.POSTED


def test_fake_stripe_replays_a_saved_500_for_the_same_key(fake_stripe, customer_org):
    """A test of FakeStripe's fidelity, not of our code: like Stripe, it saves a 500 under
    its Idempotency-Key and replays it for that key, creating nothing, while a new key is
    processed. The 5xx tests above rely on exactly this (it is why a retry after a 5xx
    needs a new key), so a fake that stopped replaying would make them pass for the
    wrong reason."""
    fake_stripe.plan = [500]
    client = reporting.stripe_client()
    params = {
        "event_name": "api_requests",
        "identifier": "gl-x",
        "timestamp": int(HOUR.timestamp()),
        "payload": {"stripe_customer_id": "cus_acme", "value": "1"},
    }
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k"})
    assert fake_stripe.creates == []
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k2"})
    assert fake_stripe.created_identifiers() == ["gl-x"]


def test_a_500_after_stripe_recorded_the_event_is_counted_once(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "4")])
    fake_stripe.plan = [Fail(500, recorded=True)]
    result = reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "4"),
        sent(customer_org, "api_requests", 0, "4", key=f"{expected}-r1"),
    ]
    # the new key reached Stripe as a second create of the identifier: Stripe refused it
    assert fake_stripe.creates == [
        {"identifier": expected, "value": "4", "duplicate": False},
        {"identifier": expected, "value": "4", "duplicate": True},
    ]
    assert fake_stripe.counted() == {expected: Decimal("4")}
    # ... which proves Stripe has it: acknowledged, events posted
    assert result.report.status == MeterReportStatus.SUCCEEDED
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT
    assert BillingEvent.objects.get().status == BillingEventStatus.POSTED


def test_timeout_after_stripe_received_resends_the_same_identifier_and_key(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "3")])
    fake_stripe.plan = [requests.exceptions.ReadTimeout("read timed out")]
    reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "3")] * 2
    assert fake_stripe.created_identifiers() == [expected]  # the resend was a replay
    assert fake_stripe.counted() == {expected: Decimal("3")}
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("sent", 2, 0)


def test_timeout_before_stripe_received_resends_the_same_identifier_and_key(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "3")])
    fake_stripe.plan = [Lost(requests.exceptions.ConnectTimeout("connect timed out"))]
    reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "3")] * 2
    assert fake_stripe.created_identifiers() == [expected]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


@pytest.mark.parametrize("status", [409, 429])
def test_conflict_and_rate_limit_retry_with_the_same_key(fake_stripe, customer_org, status):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [status]
    reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "1")] * 2
    assert fake_stripe.created_identifiers() == [ident(customer_org, "api_requests", 0)]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


def test_stripe_should_retry_false_is_obeyed(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [Fail(500, headers={"Stripe-Should-Retry": "false"})]
    result = reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "1")]  # no retry
    assert result.report.status == MeterReportStatus.FAILED
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("failed", 1, 1)
    # queued again (the admin's retry): the next run uses the new key, not the saved 500
    UsageAggregate.objects.filter(pk=aggregate.pk).update(
        status=UsageAggregateStatus.PENDING, attempts=0, next_attempt_at=None
    )
    reporting.report_usage(organization=customer_org)
    assert fake_stripe.keys() == [expected, f"{expected}-r1"]
    assert fake_stripe.created_identifiers() == [expected]
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.SENT


@pytest.mark.parametrize(
    ("error_type", "exception", "loud"),
    [("idempotency_error", "IdempotencyError", True), ("invalid_request_error", "Invalid", False)],
)
def test_idempotency_and_invalid_request_errors_are_not_retried(
    fake_stripe, customer_org, caplog, error_type, exception, loud
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [Fail(400, error_type=error_type)]
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 1
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts) == ("failed", 1)
    assert aggregate.last_error.startswith(exception)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bool(errors) is loud
    if loud:
        assert "a bug" in aggregate.last_error


def test_crash_between_send_and_mark_posted_then_rerun(fake_stripe, customer_org, monkeypatch):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 0, 2, "1")])
    real_acknowledge = reporting._acknowledge

    def crash(aggregate):
        raise SystemExit("process killed after Stripe acknowledged")

    monkeypatch.setattr(reporting, "_acknowledge", crash)
    with pytest.raises(SystemExit):
        reporting.report_usage(organization=customer_org)
    aggregate = UsageAggregate.objects.get()
    assert aggregate.status == UsageAggregateStatus.PENDING  # the outbox row survived
    assert aggregate.first_sent_at is not None  # committed before the request left
    first_sent_at = aggregate.first_sent_at
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {0}

    monkeypatch.setattr(reporting, "_acknowledge", real_acknowledge)
    reporting.report_usage(organization=customer_org)
    expected = ident(customer_org, "api_requests", 0)
    # the same identifier and key again: Stripe replays its first answer
    assert fake_stripe.requests == [sent(customer_org, "api_requests", 0, "2")] * 2
    assert fake_stripe.created_identifiers() == [expected]  # one create: nothing counted twice
    assert fake_stripe.counted() == {expected: Decimal("2")}
    assert UsageAggregate.objects.count() == 1
    assert UsageAggregate.objects.get().first_sent_at == first_sent_at
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {1}


def test_late_events_for_a_reported_hour_get_the_next_sequence(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    reporting.report_usage(organization=customer_org)
    add_events(customer_org, [("api.request", 0, 59, "1"), ("api.request", 0, 58, "1")])
    reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "1", seq=1),
        sent(customer_org, "api_requests", 0, "2", seq=2),
    ]
    assert fake_stripe.created_identifiers() == [
        ident(customer_org, "api_requests", 0, 1),
        ident(customer_org, "api_requests", 0, 2),
    ]
    assert sum(fake_stripe.counted().values()) == 3  # every event billed, none swallowed


def test_an_aggregate_first_sent_past_the_window_is_not_resent(fake_stripe, customer_org, api):
    """Stripe deduplicates identifiers and replays keys for ~24 h only: past
    STRIPE_RESEND_WINDOW_HOURS (23) a pending aggregate is flagged, never resent."""
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 1, 1, "1")])
    fake_stripe.plan = [Lost(requests.exceptions.ConnectTimeout("down"))] * 3 * 2
    reporting.report_usage(organization=customer_org)  # both fail 3 times
    assert len(fake_stripe.requests) == 6
    now = timezone.now()
    old, recent = UsageAggregate.objects.order_by("period_start")
    # both queued again; one was first sent 23 h 1 min ago, the other 22 h ago
    UsageAggregate.objects.filter(pk=old.pk).update(
        first_sent_at=now - timedelta(hours=23, minutes=1)
    )
    UsageAggregate.objects.filter(pk=recent.pk).update(first_sent_at=now - timedelta(hours=22))
    UsageAggregate.objects.update(status=UsageAggregateStatus.PENDING, attempts=0)

    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="had failures"):
        call_command("report_usage", stdout=out, stderr=err)
    assert fake_stripe.identifiers()[6:] == [ident(customer_org, "api_requests", 1)]  # only one
    old.refresh_from_db()
    recent.refresh_from_db()
    assert (old.status, recent.status) == ("needs_reconciliation", "sent")
    assert "Reconcile against Stripe's meter event summaries" in old.last_error
    assert f"NEEDS RECONCILIATION {old.identifier}" in out.getvalue()
    assert BillingEvent.objects.get(usage_aggregate=old).status == BillingEventStatus.PENDING
    health = api.get("/api/v1/billing/health/").json()
    assert (health["reconciliation_aggregates"], health["failed_aggregates"]) == (1, 0)
    # and no later run sends it either
    reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 7


def test_the_window_is_a_setting(fake_stripe, stripe_settings, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    with tenant_context(customer_org):
        reporting.build_aggregates(organization=customer_org, until=timezone.now(), report=None)
    UsageAggregate.objects.update(first_sent_at=timezone.now() - timedelta(hours=2))
    stripe_settings.STRIPE_RESEND_WINDOW_HOURS = 1
    reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == []
    assert UsageAggregate.objects.get().status == UsageAggregateStatus.NEEDS_RECONCILIATION


def test_deleting_an_aggregate_with_events_is_refused(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    reporting.report_usage(organization=customer_org)
    aggregate = UsageAggregate.objects.get()
    with pytest.raises(ProtectedError):
        aggregate.delete()
    assert BillingEvent.objects.get().usage_aggregate_id == aggregate.pk


def test_an_hour_over_15_significant_digits_is_split_exactly(fake_stripe, customer_org):
    """1,001 events of 99,999,999.9999 sum to 100,099,999,999.8999 (16 significant digits,
    which Stripe refuses): sent as two aggregates that each fit, nothing rounded."""
    quantity = Decimal("99999999.9999")
    with tenant_context(customer_org):
        record_events(
            {
                "organization": customer_org,
                "event_name": "api.request",
                "quantity": quantity,
                "created_at": HOUR + timedelta(microseconds=i),
            }
            for i in range(1001)
        )
    result = reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == [
        sent(customer_org, "api_requests", 0, "99999999999.9", seq=1),  # 1,000 events
        sent(customer_org, "api_requests", 0, "99999999.9999", seq=2),  # the last one
    ]
    assert sum(fake_stripe.counted().values()) == quantity * 1001
    assert result.report.status == MeterReportStatus.SUCCEEDED
    assert result.report.aggregates_created == 2
    counts = list(UsageAggregate.objects.order_by("sequence").values_list("event_count", "status"))
    assert counts == [(1000, "sent"), (1, "sent")]
    assert not BillingEvent.objects.filter(status=BillingEventStatus.PENDING).exists()


def test_an_oversized_pending_aggregate_is_split_before_its_first_send(fake_stripe, customer_org):
    """An aggregate left oversized by an earlier version (never sent) is split too."""
    with tenant_context(customer_org):
        events = record_events(
            {
                "organization": customer_org,
                "event_name": "api.request",
                "quantity": Decimal("99999999.9999"),
                "created_at": HOUR + timedelta(microseconds=i),
            }
            for i in range(1001)
        )
        aggregate = UsageAggregate.objects.create(
            organization=customer_org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            value=Decimal("99999999.9999") * 1001,
            event_count=1001,
            identifier=ident(customer_org, "api_requests", 0),
        )
        BillingEvent.objects.filter(pk__in=[e.pk for e in events]).update(usage_aggregate=aggregate)
    reporting.report_usage(organization=customer_org)
    assert [r["value"] for r in fake_stripe.requests] == ["99999999999.9", "99999999.9999"]
    assert not BillingEvent.objects.filter(status=BillingEventStatus.PENDING).exists()


def test_organization_without_stripe_customer_is_skipped_and_reported(fake_stripe, org):
    add_events(org, [("api.request", 0, 1, "1")])
    out = StringIO()
    call_command("report_usage", "--organization", org.slug, stdout=out)
    assert "skipped: no Stripe customer" in out.getvalue()
    assert fake_stripe.requests == []
    assert MeterReport.objects.get().status == MeterReportStatus.SKIPPED
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING


def test_without_api_key_it_is_a_dry_run_that_changes_nothing(stripe_settings, customer_org):
    stripe_settings.STRIPE_API_KEY = ""
    add_events(customer_org, [("api.request", 0, 1, "1"), ("doc.upload", 0, 2, "1")])
    out = StringIO()
    with responses.RequestsMock() as mock:  # any HTTP call would fail the test
        call_command("report_usage", stdout=out)
        assert len(mock.calls) == 0
    text = out.getvalue()
    assert "STRIPE_API_KEY is not set: dry run" in text
    assert f"would send {ident(customer_org, 'api_requests', 0)}" in text
    assert not UsageAggregate.objects.exists()
    assert set(BillingEvent.objects.values_list("status", flat=True)) == {0}
    assert MeterReport.objects.get().status == MeterReportStatus.DRY_RUN


def test_retries_exhausted_fail_visibly_and_the_command_exits_non_zero(
    fake_stripe, customer_org, api
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake_stripe.plan = [500, 500, 500]
    with pytest.raises(CommandError, match="had failures"):
        call_command("report_usage", stdout=StringIO(), stderr=StringIO())
    expected = ident(customer_org, "api_requests", 0)
    assert fake_stripe.keys() == [expected, f"{expected}-r1", f"{expected}-r2"]
    assert fake_stripe.creates == []
    aggregate = UsageAggregate.objects.get()
    assert (aggregate.status, aggregate.attempts, aggregate.key_revision) == ("failed", 3, 3)
    assert "planned 500" in aggregate.last_error
    assert BillingEvent.objects.get().status == BillingEventStatus.PENDING
    health = api.get("/api/v1/billing/health/").json()
    assert health["failed_aggregates"] == 1
    assert health["last_report_at"] is not None


def test_hours_older_than_35_days_are_not_sent(fake_stripe, customer_org):
    with tenant_context(customer_org):
        record_event(
            organization=customer_org,
            event_name="api.request",
            request_id="old",
            created_at=timezone.now() - timedelta(days=40),
        )
    result = reporting.report_usage(organization=customer_org)
    assert fake_stripe.requests == []
    assert result.report.status == MeterReportStatus.FAILED
    assert "35 days" in UsageAggregate.objects.get().last_error


def test_value_significant_digits():
    assert reporting.format_value(Decimal("12.5000")) == "12.5"
    assert reporting.format_value(Decimal("100")) == "100"
    assert reporting.format_value(Decimal("123456789012345")) == "123456789012345"
    with pytest.raises(ValueError, match="15"):
        reporting.format_value(Decimal("1234567890123.456"))
    assert reporting.value_fits(Decimal("99999999999.9000"))
    assert not reporting.value_fits(Decimal("100099999999.8999"))


def test_report_usage_endpoint_access(fake_stripe, customer_org, outsider_api, anon_api, api):
    with tenant_context(customer_org):
        report = MeterReport.objects.create(organization=customer_org, until=timezone.now())
    assert outsider_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 404
    assert anon_api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 401
    assert anon_api.post("/api/v1/billing/report-usage/").status_code == 401
    member = bearer_client(member_of(customer_org, role="member"))
    refused = member.post("/api/v1/billing/report-usage/")
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_forbidden"
    assert api.get(f"/api/v1/billing/report-usage/{report.pk}/").status_code == 200


def test_until_bounds_the_events_reported(fake_stripe, customer_org):
    add_events(customer_org, [("api.request", 0, 1, "1"), ("api.request", 3, 1, "1")])
    until = (HOUR + timedelta(hours=1)).isoformat()
    call_command("report_usage", "--until", until, stdout=StringIO())
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("report_usage", "--until", "yesterday", stdout=StringIO())


def test_timestamps_are_utc_hours(customer_org):
    assert reporting.current_hour(datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC)) == datetime(
        2026, 3, 1, 10, tzinfo=UTC
    )


def test_a_second_run_for_the_same_organization_is_skipped_while_one_runs(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key(customer_org)])  # another run
        result = reporting.report_usage(organization=customer_org)
        assert result.report.status == MeterReportStatus.SKIPPED
        assert "another usage report for acme-law is running" in result.report.detail
        assert "skipped" in result.report.detail
        # the hourly command overlapping it: skipped too, and not a failure (exit 0)
        out = StringIO()
        call_command("report_usage", stdout=out, stderr=StringIO())
        assert "[1] acme-law: skipped: another usage report" in out.getvalue()
        assert "1 skipped (another run was reporting them)" in out.getvalue()
        assert fake_stripe.requests == []
        statuses = set(MeterReport.objects.values_list("status", flat=True))
        assert statuses == {MeterReportStatus.SKIPPED}
        other.execute("SELECT pg_advisory_unlock(%s)", [lock_key(customer_org)])
    finally:
        other.close()
    reporting.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 1


def test_an_error_in_one_organization_does_not_stop_the_others(
    fake_stripe, customer_org, outsider_org, monkeypatch, caplog
):
    outsider_org.stripe_customer_id = "cus_other"
    outsider_org.save(update_fields=["stripe_customer_id"])
    add_events(customer_org, [("api.request", 0, 1, "1")])
    add_events(outsider_org, [("api.request", 0, 1, "1")])
    real_build = reporting.build_aggregates

    def build(*, organization, **kwargs):
        if organization.pk == customer_org.pk:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")  # a real database error, for acme-law only
        return real_build(organization=organization, **kwargs)

    monkeypatch.setattr(reporting, "build_aggregates", build)
    out, err = StringIO(), StringIO()
    with caplog.at_level(logging.ERROR, logger="billing.reporting"):
        with pytest.raises(CommandError, match="1 organization"):
            call_command("report_usage", stdout=out, stderr=err)
    # acme-law (first by slug) failed; other-firm was still reported
    assert fake_stripe.identifiers() == [ident(outsider_org, "api_requests", 0)]
    assert "[1] acme-law: FAILED: DataError: division by zero" in err.getvalue()
    assert "Done: 1 meter event(s) sent" in out.getvalue()
    reports = dict(MeterReport.objects.values_list("organization__slug", "status"))
    assert reports == {"acme-law": "failed", "other-firm": "succeeded"}
    assert MeterReport.objects.get(organization=customer_org).detail.startswith("DataError")
    logged = [
        r for r in caplog.records if r.levelno == logging.ERROR and "acme-law" in r.getMessage()
    ]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback


# --- one run at a time per organization: the in-process queue and abandoned reports ----------


def make_report(org, *, status, age=timedelta(0), started=None):
    """A report created ``age`` ago; ``started`` (how long ago its run began) defaults to
    ``age`` for a ``running`` report and to never for any other."""
    if started is None and status == MeterReportStatus.RUNNING:
        started = age
    now = timezone.now()
    with tenant_context(org):
        return MeterReport.objects.create(
            organization=org,
            until=now,
            status=status,
            created_at=now - age,
            started_at=None if started is None else now - started,
        )


def test_a_post_returns_the_report_in_progress_instead_of_queuing_another(
    fake_stripe, customer_org, api
):
    """Sequential POSTs in one transaction (on_commit never fires: the report stays
    queued). The concurrent case, which needs the advisory lock, is
    ``test_two_concurrent_posts_queue_one_report``."""
    first = api.post("/api/v1/billing/report-usage/")
    assert (first.status_code, first.json()["status"]) == (202, "queued")
    assert first.json()["started_at"] is None
    again = api.post("/api/v1/billing/report-usage/")
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    assert MeterReport.objects.count() == 1
    # a report left queued for over ABANDONED_AFTER by a dead process is not waited for
    MeterReport.objects.update(created_at=timezone.now() - timedelta(hours=2))
    fresh = api.post("/api/v1/billing/report-usage/")
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]
    # a run in progress (e.g. the hourly command's) is returned as well
    MeterReport.objects.filter(pk=fresh.json()["id"]).update(status=MeterReportStatus.SUCCEEDED)
    running = make_report(customer_org, status=MeterReportStatus.RUNNING)
    during = api.post("/api/v1/billing/report-usage/")
    assert (during.json()["id"], during.json()["status"]) == (str(running.pk), "running")
    assert MeterReport.objects.count() == 3
    assert fake_stripe.requests == []


def test_a_post_judges_a_running_report_by_when_its_run_began(fake_stripe, customer_org, api):
    # queued 3 h ago (it waited behind other organizations' runs), began 5 minutes ago
    waited = make_report(
        customer_org,
        status=MeterReportStatus.RUNNING,
        age=timedelta(hours=3),
        started=timedelta(minutes=5),
    )
    during = api.post("/api/v1/billing/report-usage/")
    assert (during.json()["id"], during.json()["status"]) == (str(waited.pk), "running")
    assert during.json()["started_at"] is not None
    # began 2 h ago: its process stopped (a live run holds the organization's lock)
    MeterReport.objects.filter(pk=waited.pk).update(started_at=timezone.now() - timedelta(hours=2))
    fresh = api.post("/api/v1/billing/report-usage/")
    assert (fresh.json()["status"], fresh.json()["id"] != str(waited.pk)) == ("queued", True)


def test_a_run_marks_the_organizations_abandoned_reports_failed(
    fake_stripe, customer_org, outsider_org
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    old = timedelta(hours=1, minutes=1)
    stale_queued = make_report(customer_org, status=MeterReportStatus.QUEUED, age=old)
    stale_running = make_report(customer_org, status=MeterReportStatus.RUNNING, age=old)
    # queued long ago, but its run began 59 minutes ago: not stale (judged by started_at)
    waited = make_report(
        customer_org,
        status=MeterReportStatus.RUNNING,
        age=timedelta(hours=3),
        started=timedelta(minutes=59),
    )
    # a row from before migration 0009 (no started_at): judged by created_at
    legacy = make_report(customer_org, status=MeterReportStatus.RUNNING, age=old)
    MeterReport.objects.filter(pk=legacy.pk).update(started_at=None)
    recent = make_report(customer_org, status=MeterReportStatus.QUEUED, age=timedelta(minutes=59))
    finished = make_report(customer_org, status=MeterReportStatus.SUCCEEDED, age=old)
    other_org = make_report(outsider_org, status=MeterReportStatus.RUNNING, age=old)
    # the report being run is old too (it waited in a busy worker): it is not touched
    current = make_report(customer_org, status=MeterReportStatus.QUEUED, age=timedelta(hours=3))
    result = reporting.report_usage(organization=customer_org, report=current)
    assert result.report.pk == current.pk
    assert "marked 3 abandoned report(s) failed" in result.lines
    rows = {r.pk: r for r in MeterReport.objects.all()}
    for abandoned in (stale_running, legacy):
        assert rows[abandoned.pk].status == MeterReportStatus.FAILED
        assert rows[abandoned.pk].detail == "abandoned: the process running it stopped"
        assert rows[abandoned.pk].finished_at is not None
    # a queued one may only be waiting in a busy worker: the detail does not say it stopped
    assert rows[stale_queued.pk].status == MeterReportStatus.FAILED
    assert rows[stale_queued.pk].detail == (
        "abandoned: still queued after 1 hour (its process stopped, or its worker was busy); "
        f"run {current.pk} reported the organization's pending usage instead"
    )
    assert rows[stale_queued.pk].finished_at is not None
    assert rows[waited.pk].status == MeterReportStatus.RUNNING
    assert rows[recent.pk].status == MeterReportStatus.QUEUED
    assert rows[finished.pk].status == MeterReportStatus.SUCCEEDED
    assert rows[other_org.pk].status == MeterReportStatus.RUNNING
    assert (rows[current.pk].status, rows[current.pk].detail) == ("succeeded", "")
    assert rows[current.pk].started_at > rows[current.pk].created_at + timedelta(hours=2)
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


def test_a_run_claims_only_a_queued_report(fake_stripe, customer_org, caplog):
    """``report_usage(report=...)`` moves the report ``queued -> running`` by a
    conditional update: a report marked abandoned (failed) before its run began is
    neither run nor turned back to ``running``."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    MeterReport.objects.filter(pk=report.pk).update(
        status=MeterReportStatus.FAILED, detail="abandoned: marked by another run"
    )
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = reporting.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == (
        "failed",
        "abandoned: marked by another run",
    )
    report.refresh_from_db()
    assert (report.status, report.started_at) == (MeterReportStatus.FAILED, None)
    assert fake_stripe.requests == []
    assert not UsageAggregate.objects.exists()
    assert any("is no longer queued" in r.getMessage() for r in caplog.records)


def test_a_report_abandoned_while_it_waited_for_the_lock_is_not_run(
    fake_stripe, customer_org, monkeypatch, caplog
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)
    real_lock = reporting._organization_lock

    def lock_after_being_abandoned(organization):
        # between the claim (running) and the lock: another run marks it abandoned
        MeterReport.objects.filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=reporting.ABANDONED_DETAIL
        )
        return real_lock(organization)

    monkeypatch.setattr(reporting, "_organization_lock", lock_after_being_abandoned)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = reporting.report_usage(organization=customer_org, report=report)
    assert (result.report.status, result.report.detail) == ("failed", reporting.ABANDONED_DETAIL)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", reporting.ABANDONED_DETAIL)
    assert fake_stripe.requests == []
    assert any(
        "while it waited for the organization's lock" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("stripe_customer", ["cus_acme", ""])
def test_a_report_abandoned_during_its_run_is_not_turned_back(
    fake_stripe, customer_org, monkeypatch, caplog, stripe_customer
):
    """The run ends its report by a conditional update ``running -> <final>``: a report
    marked failed meanwhile keeps that status and detail (the run would have written
    ``succeeded``, or ``skipped`` for an organization without a Stripe customer)."""
    customer_org.stripe_customer_id = stripe_customer
    customer_org.save(update_fields=["stripe_customer_id"])
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.QUEUED)

    def abandon():
        MeterReport.objects.filter(pk=report.pk).update(
            status=MeterReportStatus.FAILED, detail=reporting.ABANDONED_DETAIL
        )

    real_start, real_send = reporting._start, reporting.send_aggregate

    def start_then_abandon(report, **kwargs):
        claimed = real_start(report, **kwargs)
        if not stripe_customer:  # this path ends at once: abandon it right after the claim
            abandon()
        return claimed

    def abandon_then_send(client, aggregate, **kwargs):
        abandon()  # while the run is sending
        return real_send(client, aggregate, **kwargs)

    monkeypatch.setattr(reporting, "_start", start_then_abandon)
    monkeypatch.setattr(reporting, "send_aggregate", abandon_then_send)
    with caplog.at_level(logging.WARNING, logger="billing.reporting"):
        result = reporting.report_usage(organization=customer_org, report=report)
    report.refresh_from_db()
    assert (report.status, report.detail) == ("failed", reporting.ABANDONED_DETAIL)
    assert (result.report.status, result.report.detail) == ("failed", reporting.ABANDONED_DETAIL)
    assert report.started_at is not None
    warned = [r.getMessage() for r in caplog.records if "not overwritten" in r.getMessage()]
    assert len(warned) == 1
    if stripe_customer:
        assert "not overwritten with succeeded" in warned[0]
        assert "1 sent" in warned[0] and "1 event(s) posted" in warned[0]
        # the work itself was done and acknowledged: Stripe has it once, the event is posted
        assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]
        assert BillingEvent.objects.get().status == BillingEventStatus.POSTED
    else:
        assert "not overwritten with skipped" in warned[0]
        assert fake_stripe.requests == []


def lock_key(org) -> int:
    return reporting._advisory_key(reporting.RUN_LOCK, org.pk)


# --- POST report-usage/: queued on the in-process worker, never run in the request -----------
# These need real commits (the worker reads the report on its own connection).


@pytest.fixture
def worker_idle():
    yield
    reporting.wait_for_queued_reports(timeout=60)


def wait_for_report(api, report_id, *, timeout=30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/billing/report-usage/{report_id}/").json()
        if body["status"] not in (MeterReportStatus.QUEUED, MeterReportStatus.RUNNING):
            return body
        assert time.monotonic() < deadline, f"report still {body['status']} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_report_usage_endpoint_answers_202_before_stripe_does(
    stripe_settings, customer_org, api, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    fake = FakeStripe()
    called, release, answered = threading.Event(), threading.Event(), threading.Event()

    def slow_stripe(request):
        called.set()
        release.wait(timeout=10)
        try:
            return fake(request)
        finally:
            answered.set()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, METER_URL, callback=slow_stripe)
        try:
            started = time.monotonic()
            response = api.post("/api/v1/billing/report-usage/")
            took = time.monotonic() - started
            assert response.status_code == 202
            assert response.json()["status"] == "queued"
            assert response.json()["started_at"] is None
            report_id = response.json()["id"]
            assert called.wait(timeout=10), "the worker never called Stripe"
            assert not answered.is_set(), "the 202 came only after Stripe answered"
            assert took < 5
            running = api.get(f"/api/v1/billing/report-usage/{report_id}/").json()
            assert running["status"] == "running"
            assert running["started_at"] is not None
        finally:
            release.set()  # also when an assertion failed: the worker must not hang
        done = wait_for_report(api, report_id)
    assert (done["status"], done["aggregates_sent"], done["events_posted"]) == ("succeeded", 1, 1)
    stamps = [datetime.fromisoformat(done[k]) for k in ("created_at", "started_at", "finished_at")]
    assert stamps == sorted(stamps)
    assert fake.requests == [sent(customer_org, "api_requests", 0, "1")]
    with cross_tenant(reason="test assertions"):
        aggregate = UsageAggregate.objects.get()
        assert aggregate.status == UsageAggregateStatus.SENT
        assert str(aggregate.report_id) == report_id


@pytest.mark.django_db(transaction=True)
def test_an_unexpected_error_in_the_worker_fails_the_report_not_the_request(
    fake_stripe, customer_org, api, monkeypatch, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])

    def explode(**kwargs):
        raise RuntimeError("outbox exploded")

    monkeypatch.setattr(reporting, "build_aggregates", explode)
    response = api.post("/api/v1/billing/report-usage/")
    assert response.status_code == 202
    done = wait_for_report(api, response.json()["id"])
    assert done["status"] == "failed"
    assert done["detail"] == "RuntimeError: outbox exploded"
    assert done["finished_at"] is not None
    assert fake_stripe.requests == []
    # the worker survived and released the organization's lock: the next run works
    monkeypatch.undo()
    again = api.post("/api/v1/billing/report-usage/")
    assert wait_for_report(api, again.json()["id"])["status"] == "succeeded"
    assert fake_stripe.identifiers() == [ident(customer_org, "api_requests", 0)]


@pytest.mark.django_db(transaction=True)
def test_the_worker_takes_the_organization_lock_on_its_own_connection(
    fake_stripe, customer_org, api, worker_idle
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key(customer_org)])
        refused = api.post("/api/v1/billing/report-usage/")
        assert refused.status_code == 202
        done = wait_for_report(api, refused.json()["id"])
        assert done["status"] == "skipped"  # not a failure: the lock's holder does the work
        assert done["detail"].startswith("another usage report for acme-law is running")
        assert done["finished_at"] is not None
        assert fake_stripe.requests == []
    finally:
        other.close()  # releases the lock
    again = api.post("/api/v1/billing/report-usage/")
    assert wait_for_report(api, again.json()["id"])["status"] == "succeeded"
    # and the worker released it after its run (its connection is closed, too)
    probe = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        locked = probe.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(customer_org)])
        assert locked.fetchone()[0] is True
    finally:
        probe.close()


@pytest.mark.django_db(transaction=True)
def test_the_worker_does_not_run_a_report_marked_abandoned_meanwhile(
    fake_stripe, customer_org, worker_idle
):
    """A report that waited in a busy worker and was marked abandoned by another run is
    not run when its turn comes (the worker claims only a ``queued`` report)."""
    add_events(customer_org, [("api.request", 0, 1, "1")])
    report = make_report(customer_org, status=MeterReportStatus.FAILED)
    reporting._worker.submit(reporting._run_queued_report, report.pk, customer_org, None).result(
        timeout=30
    )
    assert fake_stripe.requests == []
    with cross_tenant(reason="test assertions"):
        report.refresh_from_db()
        assert report.status == MeterReportStatus.FAILED
        assert not UsageAggregate.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_posts_queue_one_report(fake_stripe, customer_org, worker_idle):
    """A real race on two connections: the first ``queue_report`` runs inside a
    transaction held open after it queued its report (uncommitted, invisible to others);
    the second waits on the transaction-level advisory lock (asserted with
    ``pg_blocking_pids``) until the first commits, then finds that report and returns
    it. Without the lock the second would see no report in progress and queue another."""

    def queue() -> MeterReport:
        with tenant_context(customer_org):
            return reporting.queue_report(organization=customer_org)

    results = race_second_behind_first(queue, queue, what="the second POST")
    assert isinstance(results["first"], MeterReport), results["first"]
    assert isinstance(results["second"], MeterReport), results["second"]
    assert results["second"].pk == results["first"].pk
    with cross_tenant(reason="test assertions"):
        assert list(MeterReport.objects.values_list("pk", flat=True)) == [results["first"].pk]


# --- migration 0006: aggregates sent before it get first_sent_at -----------------------------

MIGRATION_0006 = importlib.import_module(
    "billing.migrations.0006_outbox_first_sent_key_revision_protect"
)
SENT_BEFORE = {  # name: (status, attempts, last_error, stamped?)
    "timed_out_pending": ("pending", 1, "APIConnectionError: read timed out", True),
    "failed_after_5xx": ("failed", 5, "APIError: planned 500", True),
    "retried_by_the_admin": ("pending", 0, "APIError: planned 500", True),
    "old_hour_after_requests": (
        "failed",
        3,
        "the hour is more than 35 days old: Stripe no longer accepts it",
        True,
    ),
    "too_many_digits": (
        "failed",
        2,
        "value 1000000000000000.0000 has 16 significant digits (Stripe allows 15)",
        False,
    ),
    "old_hour_never_sent": (
        "failed",
        1,
        "the hour is more than 35 days old: Stripe no longer accepts it",
        False,
    ),
    "never_tried": ("pending", 0, "", False),
    "sent": ("sent", 1, "", False),
}


def insert_0005_aggregate(org, sequence, status, attempts, last_error, created_at):
    """One outbox row as migration 0005 shaped the table (no first_sent_at, no key_revision)."""
    with cross_tenant(reason="test set-up"), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_usageaggregate (id, organization_id, event_name,"
            " meter_event_name, period_start, sequence, value, event_count, identifier, status,"
            " attempts, last_error, created_at, sent_at)"
            " VALUES (%s, %s, 'api.request', 'api_requests', %s, %s, 1, 1, %s, %s, %s, %s, %s,"
            " %s) RETURNING id",
            [
                uuid.uuid4(),
                org.pk,
                HOUR,
                sequence,
                ident(org, "api_requests", 0, sequence),
                status,
                attempts,
                last_error,
                created_at,
                created_at if status == "sent" else None,
            ],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_migration_0006_stamps_first_sent_at_on_aggregates_sent_before_it(customer_org):
    created_at = timezone.now() - timedelta(days=3)
    call_command("migrate", "billing", "0005", verbosity=0)
    try:
        ids = {
            name: insert_0005_aggregate(customer_org, n, status, attempts, error, created_at)
            for n, (name, (status, attempts, error, _)) in enumerate(SENT_BEFORE.items(), 1)
        }
    finally:
        call_command("migrate", "billing", verbosity=0)
    with cross_tenant(reason="test assertions"):
        first_sent = dict(UsageAggregate.objects.values_list("pk", "first_sent_at"))
        stamped = {name: first_sent[pk] for name, pk in ids.items()}
        assert stamped == {
            name: created_at if expected else None
            for name, (_, _, _, expected) in SENT_BEFORE.items()
        }
        # ... so the rules for sent aggregates apply: past the window the admin's retry
        # refuses them and they can be reconciled; a never-sent failure is queued again
        requeued, refused = reporting.requeue_failed(aggregates=UsageAggregate.objects.all())
        assert requeued == 2  # too_many_digits, old_hour_never_sent
        assert sorted(refused) == sorted(
            ident(customer_org, "api_requests", 0, n)
            for n, name in enumerate(SENT_BEFORE, 1)
            if name in ("failed_after_5xx", "old_hour_after_requests")
        )
        failed = UsageAggregate.objects.get(pk=ids["failed_after_5xx"])
        assert reporting.resolve_reconciliation(aggregate=failed, stripe_has_it=True, by="ops")


@pytest.mark.rls_raw
def test_the_0006_backfill_turns_on_the_cross_tenant_path_itself(org):
    """Migrations run as the owner, which FORCE row-level security filters like anyone
    (the suite's owner is a superuser, which is exempt, so this runs the step as the app
    role): without ``app.cross_tenant`` the UPDATE would see no row."""
    with cross_tenant(reason="test set-up"):
        aggregate = UsageAggregate.objects.create(
            organization=org,
            event_name="api.request",
            meter_event_name="api_requests",
            period_start=HOUR,
            value=1,
            identifier=ident(org, "api_requests", 0),
            attempts=2,
            last_error="APIConnectionError: read timed out",
            created_at=timezone.now() - timedelta(days=2),
        )
    with connection.schema_editor() as editor:
        MIGRATION_0006.backfill_first_sent_at(django_apps, editor)
    with connection.cursor() as cursor:  # the setting is put back
        cursor.execute("SELECT current_setting('app.cross_tenant', true)")
        assert cursor.fetchone()[0] in ("", None)
    with cross_tenant(reason="test assertions"):
        aggregate.refresh_from_db()
    assert aggregate.first_sent_at == aggregate.created_at
