"""``manage.py stripe_setup`` and ``manage.py check_stripe_config`` against
``FakeStripeCatalog`` (Stripe intercepted at the HTTP client): the request bodies sent,
idempotency (a second run creates nothing), ``--dry-run``, replacement of a changed price,
and every difference ``check_stripe_config`` reports."""

import copy
import json
from io import StringIO

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.tests.fakes_catalog import FakeStripeCatalog

TIERS = [
    {"up_to": "10000", "unit_amount_decimal": "0.5"},
    {"up_to": None, "unit_amount_decimal": "0.25"},
]
FLAT = [{"up_to": None, "unit_amount_decimal": "1"}]


def plans() -> dict:
    """Requests: 1,000 included then the README tiers; uploads 10 included at 5 c; pages
    a flat 1 c (a per_unit price in Stripe)."""
    return {
        tier: {
            "name": tier.title(),
            "rate_limit": {},
            "meters": {
                "api.request": {"stripe_price_id": "", "included": "1000", "tiers": TIERS},
                "doc.upload": {
                    "stripe_price_id": "",
                    "included": "10",
                    "tiers": [{"up_to": None, "unit_amount_decimal": "5"}],
                },
                "doc.processed": {"stripe_price_id": "", "included": "0", "tiers": FLAT},
            },
        }
        for tier in ("starter", "pro", "enterprise")
    }


@pytest.fixture
def stripe_on(settings):
    settings.STRIPE_API_KEY = "sk_test_goldleaves"
    settings.STRIPE_METERS = {
        "api.request": "api_requests",
        "doc.upload": "documents",
        "doc.processed": "pages",
    }
    settings.BILLING_PLANS = plans()
    settings.BILLING_CURRENCY = "usd"
    return settings


@pytest.fixture
def fake(stripe_on):
    catalog = FakeStripeCatalog()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        catalog.install(mock)
        yield catalog


def run(command, *args) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command(command, *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def configured(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("BILLING_PLANS="))
    return json.loads(line.removeprefix("BILLING_PLANS="))


def test_without_a_key_both_commands_refuse(settings):
    settings.STRIPE_API_KEY = ""
    for command in ("stripe_setup", "check_stripe_config"):
        with pytest.raises(CommandError, match="STRIPE_API_KEY is not set"):
            call_command(command, stdout=StringIO())


@responses.activate
def test_with_invalid_plans_both_commands_refuse_before_calling_stripe(settings):
    settings.STRIPE_API_KEY = "sk_test_invalid_plans"
    settings.BILLING_PLANS = {"pro": {"name": "Pro", "meters": "not a mapping"}}
    for command in ("stripe_setup", "check_stripe_config"):
        with pytest.raises(CommandError, match=r"^BILLING_PLANS is invalid \(manage.py check"):
            call_command(command, stdout=StringIO())
    assert len(responses.calls) == 0


def test_setup_creates_meters_products_and_graduated_prices(fake):
    code, output = run("stripe_setup")
    assert code == 0, output
    meters = fake.creates("/v1/billing/meters")
    assert [m["form"]["event_name"] for m in meters] == ["api_requests", "pages", "documents"]
    assert meters[0]["form"] == {
        "display_name": "Goldleaves api.request",
        "event_name": "api_requests",
        "default_aggregation[formula]": "sum",
        "customer_mapping[event_payload_key]": "stripe_customer_id",
        "customer_mapping[type]": "by_id",
        "value_settings[event_payload_key]": "value",
    }
    products = fake.creates("/v1/products")
    assert [p["form"]["metadata[goldleaves_meter]"] for p in products] == [
        "api.request",
        "doc.processed",
        "doc.upload",
    ]
    prices = {p["form"]["lookup_key"]: p for p in fake.creates("/v1/prices")}
    assert len(prices) == 9
    requests = prices["goldleaves_pro_api_request"]
    meter_id = fake.meters[0]["id"]
    assert requests["form"] == {
        "currency": "usd",
        "product": fake.products[0]["id"],
        "lookup_key": "goldleaves_pro_api_request",
        "nickname": "Pro api.request",
        "metadata[goldleaves_plan]": "pro",
        "metadata[goldleaves_meter]": "api.request",
        "recurring[interval]": "month",
        "recurring[usage_type]": "metered",
        "recurring[meter]": meter_id,
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        # the 1,000 included units are a free first tier; the plan's bounds are shifted
        "tiers[0][up_to]": "1000",
        "tiers[0][unit_amount_decimal]": "0",
        "tiers[1][up_to]": "11000",
        "tiers[1][unit_amount_decimal]": "0.5",
        "tiers[2][up_to]": "inf",
        "tiers[2][unit_amount_decimal]": "0.25",
    }
    pages = prices["goldleaves_pro_doc_processed"]["form"]
    assert (pages["billing_scheme"], pages["unit_amount_decimal"]) == ("per_unit", "1")
    assert "tiers[0][up_to]" not in pages
    assert all(
        r["idempotency_key"].startswith("goldleaves-setup-") for r in fake.creates("/v1/prices")
    )
    ids = configured(output)
    assert ids["pro"]["meters"]["api.request"]["stripe_price_id"] == next(
        p["id"] for p in fake.prices if p["lookup_key"] == "goldleaves_pro_api_request"
    )
    assert ids["pro"]["meters"]["api.request"]["tiers"] == TIERS  # the rest as configured
    assert "Done: 0 found, 15 created, 0 replaced." in output


def test_a_second_run_finds_everything_and_creates_nothing(fake):
    _, first = run("stripe_setup")
    before = len(fake.requests)
    code, output = run("stripe_setup")
    assert code == 0
    assert [r for r in fake.requests[before:] if r["method"] == "POST"] == []
    assert "Done: 15 found, 0 created, 0 replaced." in output
    assert configured(output) == configured(first)


def test_dry_run_creates_nothing_and_says_what_it_would(fake):
    code, output = run("stripe_setup", "--dry-run")
    assert code == 0
    assert [r for r in fake.requests if r["method"] == "POST"] == []
    assert "would create meter api.request (api_requests)" in output
    assert "would create price goldleaves_starter_doc_upload" in output
    assert "dry run" in output


def test_a_changed_plan_gets_a_new_price_that_takes_over_the_lookup_key(fake, settings):
    run("stripe_setup")
    old = next(p["id"] for p in fake.prices if p["lookup_key"] == "goldleaves_pro_api_request")
    changed = copy.deepcopy(settings.BILLING_PLANS)
    changed["pro"]["meters"]["api.request"]["included"] = "2000"
    settings.BILLING_PLANS = changed
    code, output = run("stripe_setup")
    assert code == 0
    replacement = fake.creates("/v1/prices")[-1]["form"]
    assert replacement["transfer_lookup_key"] == "true"
    assert (replacement["tiers[0][up_to]"], replacement["tiers[1][up_to]"]) == ("2000", "12000")
    assert (
        f"({old}) differs: tiers is [1000: 0, 11000: 0.5, inf: 0.25], "
        "not [2000: 0, 12000: 0.5, inf: 0.25]" in output
    )
    assert "Done: 14 found, 0 created, 1 replaced." in output
    new = configured(output)["pro"]["meters"]["api.request"]["stripe_price_id"]
    assert new != old and next(p for p in fake.prices if p["id"] == old)["lookup_key"] is None


def test_check_passes_once_the_printed_ids_are_configured(fake, settings):
    _, output = run("stripe_setup")
    settings.BILLING_PLANS = configured(output)
    code, output = run("check_stripe_config")
    assert (code, output.strip()) == (0, "No differences: 9 plan meters match Stripe.")
    assert [r for r in fake.requests if r["method"] == "POST"][15:] == []  # it only reads


def test_check_lists_every_difference_and_exits_1(fake, settings):
    _, output = run("stripe_setup")
    plans_with_ids = configured(output)
    plans_with_ids["starter"]["meters"]["doc.upload"]["stripe_price_id"] = ""
    plans_with_ids["pro"]["meters"]["doc.upload"]["stripe_price_id"] = "price_gone"
    plans_with_ids["enterprise"]["meters"]["api.request"]["tiers"][0]["unit_amount_decimal"] = "0.4"
    settings.BILLING_PLANS = plans_with_ids
    settings.BILLING_CURRENCY = "eur"
    fake.meters[2]["status"] = "inactive"  # the documents meter
    code, output = run("check_stripe_config")
    assert code == 1
    lines = output.splitlines()
    assert "meter doc.upload: Stripe has no active meter 'documents'" in lines
    assert "starter.doc.upload: no stripe_price_id configured" in lines
    assert "pro.doc.upload: Stripe has no price price_gone" in lines
    enterprise = [line for line in lines if line.startswith("enterprise.api.request")]
    assert any(
        "tiers is [1000: 0, 11000: 0.5, inf: 0.25], not [1000: 0, 11000: 0.4" in x
        for x in enterprise
    )
    assert any("currency is 'usd', not 'eur'" in x for x in enterprise)
    assert lines[-1].endswith("difference(s) in 9 plan meters.")
