"""``GET /api/v1/billing/upcoming-invoice/``: the current period rated with the plan, and
``?compare=stripe`` against Stripe's invoice preview (intercepted at the HTTP client)."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
import responses

from billing.tests.factories import BillingEventFactory
from billing.usage import usage_report, usage_summary
from tenancy.context import tenant_context
from tenancy.models import MembershipRole, Organization
from tenancy.testing import bearer_client
from tenancy.tests.factories import member_of

pytestmark = pytest.mark.django_db

URL = "/api/v1/billing/upcoming-invoice/"
PREVIEW_URL = "https://api.stripe.com/v1/invoices/create_preview"
TIERS = [
    {"up_to": "10000", "unit_amount_decimal": "0.5"},
    {"up_to": None, "unit_amount_decimal": "0.25"},
]


def plan_meter(price_id, included="1000", tiers=TIERS):
    return {"stripe_price_id": price_id, "included": included, "tiers": tiers}


@pytest.fixture
def plans(settings):
    """The README example on every plan: 1,000 requests included, 0.5 c to 10,000
    billable, then 0.25 c; 10 documents included at 5 c; pages 1 c, nothing included."""
    settings.BILLING_PLANS = {
        tier: {
            "name": tier.title(),
            "rate_limit": {},
            "meters": {
                "api.request": plan_meter(f"price_{tier}_req"),
                "doc.upload": plan_meter(
                    f"price_{tier}_doc", "10", [{"up_to": None, "unit_amount_decimal": "5"}]
                ),
                "doc.processed": plan_meter(
                    f"price_{tier}_page", "0", [{"up_to": None, "unit_amount_decimal": "1"}]
                ),
            },
        }
        for tier in ("starter", "pro", "enterprise")
    }
    return settings.BILLING_PLANS


@pytest.fixture
def usage(org, plans):
    """This month: 11,002 requests as two events, 12 uploads, 3.5 pages; one request
    last month (not in the period)."""
    now = datetime.now(UTC)
    BillingEventFactory(organization=org, quantity="11000", created_at=now)
    BillingEventFactory(organization=org, quantity="2", created_at=now)
    BillingEventFactory(
        organization=org, event_name="doc.upload", quantity="12", unit="document", created_at=now
    )
    BillingEventFactory(
        organization=org, event_name="doc.processed", quantity="3.5", unit="page", created_at=now
    )
    BillingEventFactory(
        organization=org, quantity="500", created_at=datetime(2020, 1, 5, tzinfo=UTC)
    )
    return org


def meters(body):
    return {m["meter"]: m for m in body["meters"]}


def test_rates_each_meter_of_the_plan(api, usage):
    response = api.get(URL)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["plan"] == usage.plan_tier and body["period_source"] == "calendar_month"
    requests = meters(body)["api.request"]
    assert (requests["quantity"], requests["included"], requests["billable"]) == (
        "11002.0000",
        "1000.0000",
        "10002.0000",
    )
    assert [(t["quantity"], t["amount_decimal"], t["amount_cents"]) for t in requests["tiers"]] == [
        ("10000.0000", "5000", 5000),
        ("2.0000", "0.5", 1),
    ]
    assert requests["total_cents"] == 5001  # 5,000.5 rounded once, half-up
    assert meters(body)["doc.upload"]["total_cents"] == 10  # 2 over the 10 included, 5 c
    assert meters(body)["doc.processed"]["total_cents"] == 4  # 3.5 c -> 4
    assert body["total_cents"] == 5001 + 10 + 4
    assert "stripe" not in body and "differences" not in body


def test_summary_and_report_show_the_same_amounts(api, usage):
    invoice = meters(api.get(URL).json())
    start, end = datetime(2021, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    with tenant_context(usage):
        lines = {
            line["event_name"]: line
            for line in usage_summary(organization=usage, start=start, end=end)
        }
        for group_by in ("day", "route", "user"):
            rows = usage_report(organization=usage, start=start, end=end, group_by=group_by)
            for name, meter in invoice.items():
                shares = [r["cost_cents"] for r in rows if r["event_name"] == name]
                assert sum(shares) == meter["total_cents"], (group_by, name, shares)
    for name, meter in invoice.items():
        assert lines[name]["cost_cents"] == meter["total_cents"]
        assert lines[name]["pricing"] == "plan"
        assert lines[name]["included"] == Decimal(meter["included"])


def test_an_event_name_no_plan_prices_keeps_its_stored_price_and_is_not_invoiced(api, usage):
    BillingEventFactory(
        organization=usage, event_name="custom.export", quantity="3", unit_cost_cents=7
    )
    start, end = datetime(2021, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    with tenant_context(usage):
        lines = {
            line["event_name"]: line
            for line in usage_summary(organization=usage, start=start, end=end)
        }
    assert (lines["custom.export"]["cost_cents"], lines["custom.export"]["pricing"]) == (
        21,
        "event_price",
    )
    assert "custom.export" not in meters(api.get(URL).json())


def test_the_subscription_period_when_the_organization_has_one(api, usage, org):
    """``current_period_start``/``_end`` (kept from Stripe's webhooks) decide the period."""
    start, end = datetime(2019, 12, 20, tzinfo=UTC), datetime(2020, 1, 20, tzinfo=UTC)
    Organization.objects.filter(pk=org.pk).update(current_period_start=start)
    assert api.get(URL).json()["period_source"] == "calendar_month"  # only one bound
    Organization.objects.filter(pk=org.pk).update(current_period_end=end)
    body = api.get(URL).json()
    assert body["period_source"] == "subscription"
    assert (body["start"], body["end"]) == ("2019-12-20T00:00:00Z", "2020-01-20T00:00:00Z")
    assert meters(body)["api.request"]["quantity"] == "500.0000"
    assert body["total_cents"] == 0  # 500 of the 1,000 included


def test_a_member_gets_403_and_no_token_401(org, plans):
    response = bearer_client(member_of(org, role=MembershipRole.MEMBER)).get(URL)
    assert (response.status_code, response.json()["code"]) == (403, "role_forbidden")
    from rest_framework.test import APIClient

    assert APIClient().get(URL).status_code == 401


def test_an_outsider_sees_only_its_own_organization(outsider_api, usage, outsider_org):
    body = outsider_api.get(URL).json()
    assert body["organization"] == str(outsider_org.pk)
    assert all(m["quantity"] == "0.0000" for m in body["meters"]) and body["total_cents"] == 0


def test_compare_needs_stripe_and_a_customer(api, usage, settings):
    settings.STRIPE_API_KEY = ""
    response = api.get(URL + "?compare=stripe")
    assert (response.status_code, response.json()["code"]) == (409, "stripe_not_configured")
    settings.STRIPE_API_KEY = "sk_test_x"
    response = api.get(URL + "?compare=stripe")
    assert (response.status_code, response.json()["code"]) == (409, "stripe_customer_missing")
    for other in ("lago", ""):  # an empty value is not "no comparison"
        response = api.get(URL + f"?compare={other}")
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), other


def preview_body(lines, total):
    return {
        "object": "invoice",
        "total": total,
        "currency": "usd",
        "period_start": 1764547200,
        "period_end": 1767225600,
        "lines": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "object": "line_item",
                    "amount": amount,
                    "quantity_decimal": quantity,
                    "period": {"start": 1764547200, "end": 1767225600},
                    "pricing": {"type": "price_details", "price_details": {"price": price}},
                }
                for price, quantity, amount in lines
            ],
        },
    }


@pytest.fixture
def stripe_customer(usage, settings):
    settings.STRIPE_API_KEY = "sk_test_goldleaves"
    usage.stripe_customer_id = "cus_acme"
    usage.save(update_fields=["stripe_customer_id"])
    return usage


def intercept(body, status=200):
    sent = []

    def callback(request):
        sent.append({k: v[0] for k, v in parse_qs(request.body).items()})
        return (status, {}, json.dumps(body))

    mock = responses.RequestsMock(assert_all_requests_are_fired=True)
    mock.add_callback(responses.POST, PREVIEW_URL, callback=callback)
    return mock, sent


def test_compare_with_a_matching_stripe_preview(api, stripe_customer):
    tier = stripe_customer.plan_tier
    mock, sent = intercept(
        preview_body(
            [
                (f"price_{tier}_req", "11002", 5001),
                (f"price_{tier}_doc", "12", 10),
                (f"price_{tier}_page", "3.5", 4),
            ],
            5015,
        )
    )
    with mock:
        body = api.get(URL + "?compare=stripe").json()
    assert sent == [{"customer": "cus_acme"}]
    assert body["differences"] == [] and body["matches_stripe"] is True
    assert [line["meter"] for line in body["stripe"]["lines"]] == [
        "api.request",
        "doc.upload",
        "doc.processed",
    ]


def test_compare_flags_every_difference(api, stripe_customer):
    tier = stripe_customer.plan_tier
    mock, _ = intercept(
        preview_body([(f"price_{tier}_req", "11000", 5000), ("price_other", "1", 99)], 5099)
    )
    with mock:
        body = api.get(URL + "?compare=stripe").json()
    assert body["matches_stripe"] is False
    assert [(d["meter"], d["field"], d["local"], d["stripe"]) for d in body["differences"]] == [
        ("api.request", "amount_cents", "5001", "5000"),
        ("api.request", "quantity", "11002.0000", "11000"),
        ("doc.upload", "amount_cents", "10", "0"),
        ("doc.upload", "quantity", "12.0000", "0"),
        ("doc.processed", "amount_cents", "4", "0"),
        ("doc.processed", "quantity", "3.5000", "0"),
        (None, "line", None, "price_other: 99"),
        (None, "total_cents", "5015", "5099"),
    ]


def test_a_stripe_error_is_a_502_json(api, stripe_customer):
    mock, _ = intercept({"error": {"type": "api_error", "message": "boom"}}, status=500)
    with mock:
        response = api.get(URL + "?compare=stripe")
    assert (response.status_code, response.json()["code"]) == (502, "stripe_unavailable")


def test_default_plans_give_the_old_amounts_for_events_priced_when_written(org, settings):
    """The default BILLING_PLANS (one open tier at BILLING_PRICE_BOOK[meter], else
    USAGE_RATE_CENTS; test_plans checks that settings.py builds exactly that) rate a line
    to the cent as the old round_half_up(sum(quantity * unit_cost_cents)) did for events
    written through the services under the same settings."""
    from django.db.models import F, Sum

    from billing.models import BillingEvent
    from billing.pricing import line_cost_cents
    from billing.services import event_record
    from billing.tests.factories import flat_prices

    settings.USAGE_RATE_CENTS = 3
    settings.BILLING_PRICE_BOOK = {"doc.processed": 7}
    settings.BILLING_PLANS = flat_prices(
        settings.BILLING_PLANS, {"api.request": "3", "doc.upload": "3", "doc.processed": "7"}
    )
    quantities = ["0.5", "1", "2.25", "0.0001", "3.3333", "10", "0.4999"]
    with tenant_context(org):
        for i, quantity in enumerate(quantities):
            for name in ("api.request", "doc.processed", "doc.upload"):
                event_record(
                    organization=org, event_name=name, quantity=quantity, request_id=f"{name}-{i}"
                )
        old = {
            row["event_name"]: line_cost_cents(row["cost"])
            for row in BillingEvent.objects.filter(organization_id=org.pk)
            .values("event_name")
            .annotate(cost=Sum(F("quantity") * F("unit_cost_cents")))
        }
        start, end = datetime(2021, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        new = {
            line["event_name"]: line["cost_cents"]
            for line in usage_summary(organization=org, start=start, end=end)
        }
    assert new == old and old == {"api.request": 53, "doc.processed": 123, "doc.upload": 53}
