"""``BILLING_PLANS``: the defaults built from the old settings, the system checks
``billing.E005``-``E007``, and the lookups ``plan_for_tier``, ``plan_price_ids`` and
``tier_for_price_ids``."""

import copy
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from billing import plans
from billing.checks import check_plans
from billing.rating import rate

ROOT = Path(__file__).resolve().parents[2]


def meter(price_id="", included="0", tiers=None):
    return {
        "stripe_price_id": price_id,
        "included": included,
        "tiers": tiers or [{"up_to": None, "unit_amount_decimal": "1"}],
    }


def valid_plans():
    """Three plans, each meter with its own price id."""
    return {
        tier: {
            "name": tier.title(),
            "rate_limit": {"api": 60} if tier == "starter" else {},
            "meters": {
                name: meter(
                    f"price_{tier}_{name.replace('.', '_')}",
                    "1000",
                    [
                        {"up_to": "10000", "unit_amount_decimal": "0.5"},
                        {"up_to": None, "unit_amount_decimal": "0.25"},
                    ],
                )
                for name in plans.METERS
            },
        }
        for tier in plans.TIERS
    }


def ids(errors):
    return [error.id for error in errors]


def test_the_default_plans_are_valid_and_come_from_the_old_settings(settings):
    assert check_plans() == []
    parsed, problems = plans.parse_plans(settings.BILLING_PLANS)
    assert problems == []
    assert parsed["starter"].rate_limit == settings.TIER_RATE_LIMITS["starter"]
    assert parsed["enterprise"].rate_limit == {}
    for plan in parsed.values():
        for name, plan_meter in plan.meters.items():
            assert plan_meter.price.included == 0
            assert [t.up_to for t in plan_meter.price.tiers] == [None]
            expected = settings.BILLING_PRICE_BOOK.get(name, settings.USAGE_RATE_CENTS)
            assert plan_meter.price.tiers[0].unit_amount_decimal == Decimal(expected)


def test_the_default_follows_the_environment(tmp_path):
    """Built in settings.py from BILLING_PRICE_BOOK, USAGE_RATE_CENTS and TIER_RATE_LIMITS."""
    env = {
        **os.environ,
        "GOLDLEAVES_ENV_FILE": str(tmp_path / "none.env"),
        "USAGE_RATE_CENTS": "4",
        "BILLING_PRICE_BOOK": '{"doc.processed": 9}',
        "TIER_RATE_LIMITS": '{"pro": {"api": 7}}',
    }
    env["BILLING_PLANS"] = ""  # as in a .env copied from .env.example: the default
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "p = s.BILLING_PLANS; print(json.dumps([p['pro']['rate_limit'], p['starter']"
        "['rate_limit'], p['pro']['meters']['doc.processed']['tiers'], "
        "p['enterprise']['meters']['api.request']['tiers']]))"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**env, "DJANGO_SETTINGS_MODULE": "goldleaves.settings"},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out == (
        '[{"api": 7}, {}, [{"up_to": null, "unit_amount_decimal": "9"}], '
        '[{"up_to": null, "unit_amount_decimal": "4"}]]'
    )


def test_valid_plans_have_no_errors(settings):
    settings.BILLING_PLANS = valid_plans()
    assert check_plans() == []


@pytest.mark.parametrize(
    "change, path",
    [
        (lambda p: p.pop("pro"), "pro"),
        (lambda p: p.update(gold=p["pro"]), "gold"),
        (lambda p: p["pro"]["meters"].pop("doc.upload"), "pro.meters.doc.upload"),
        (lambda p: p["pro"].update(name=""), "pro.name"),
        (lambda p: p["pro"].update(rate_limit={"api": 0}), "pro.rate_limit.api"),
        (lambda p: p["pro"]["meters"]["api.request"].update(included="1.5"), "included"),
        (lambda p: p["pro"]["meters"]["api.request"].update(included=10), "included"),
        (lambda p: p["pro"]["meters"]["api.request"].update(included="-1"), "included"),
        (lambda p: p["pro"]["meters"]["api.request"].update(stripe_price_id="x"), "price_id"),
        (lambda p: p["pro"]["meters"]["api.request"].update(tiers=[]), "tiers"),
        (lambda p: p["pro"]["meters"]["api.request"]["tiers"][1].update(up_to="20"), "[1].up_to"),
        (lambda p: p["pro"]["meters"]["api.request"]["tiers"][0].update(up_to=None), "[0].up_to"),
        (
            lambda p: p["pro"]["meters"]["api.request"]["tiers"].insert(
                1, {"up_to": "500", "unit_amount_decimal": "1"}
            ),
            "[1].up_to",
        ),
        (
            lambda p: p["pro"]["meters"]["api.request"]["tiers"][0].update(
                unit_amount_decimal="0.0000000000001"
            ),
            "unit_amount_decimal",
        ),
        (
            lambda p: p["pro"]["meters"]["api.request"]["tiers"][0].update(
                unit_amount_decimal="abc"
            ),
            "unit_amount_decimal",
        ),
        (lambda p: p["pro"]["meters"]["api.request"]["tiers"][0].pop("up_to"), "tiers[0]"),
    ],
)
def test_each_malformed_plan_is_one_e005_naming_its_path(settings, change, path):
    raw = valid_plans()
    change(raw)
    settings.BILLING_PLANS = raw
    errors = check_plans()
    assert ids(errors) == ["billing.E005"], [e.msg for e in errors]
    assert path in errors[0].msg and errors[0].msg.startswith("BILLING_PLANS")


@pytest.mark.parametrize("raw", [None, [], "starter", 3])
def test_plans_that_are_not_an_object(settings, raw):
    settings.BILLING_PLANS = raw
    assert ids(check_plans()) == ["billing.E005"]


def test_a_plan_meter_stripe_does_not_report_is_e006(settings):
    settings.BILLING_PLANS = valid_plans()
    settings.STRIPE_METERS = {"api.request": "api_requests", "doc.upload": "documents"}
    errors = check_plans()
    assert ids(errors) == ["billing.E006"] * 3
    assert all("doc.processed" in e.msg for e in errors)


def test_a_price_id_used_twice_is_e007(settings):
    raw = valid_plans()
    raw["pro"]["meters"]["doc.upload"]["stripe_price_id"] = "price_starter_api_request"
    settings.BILLING_PLANS = raw
    errors = check_plans()
    assert ids(errors) == ["billing.E007"]
    assert "starter.api.request" in errors[0].msg and "pro.doc.upload" in errors[0].msg


def test_manage_py_check_stops_on_a_malformed_plan(tmp_path):
    env = {
        **os.environ,
        "GOLDLEAVES_ENV_FILE": str(tmp_path / "none.env"),
        "BILLING_PLANS": '{"starter": {}}',
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--tag", "billing"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "billing.E005" in result.stderr and "BILLING_PLANS.pro is missing" in result.stderr


def test_lookups(settings):
    settings.BILLING_PLANS = valid_plans()
    pro = plans.plan_for_tier("pro")
    assert pro.name == "Pro" and set(pro.meters) == set(plans.METERS)
    assert rate("11002", pro.meters["api.request"].price).total_cents == 5001
    assert plans.plan_price_ids("pro") == {
        "api.request": "price_pro_api_request",
        "doc.upload": "price_pro_doc_upload",
        "doc.processed": "price_pro_doc_processed",
    }
    assert plans.tier_for_price_ids(["price_pro_doc_upload", "price_pro_api_request"]) == "pro"
    assert plans.tier_for_price_ids(["price_pro_doc_upload", "price_starter_api_request"]) is None
    assert plans.tier_for_price_ids([]) is None
    assert plans.tier_for_price_ids(["price_unknown"]) is None
    with pytest.raises(plans.UnknownPlan):
        plans.plan_for_tier("gold")


def test_price_ids_left_empty_are_omitted(settings):
    raw = copy.deepcopy(valid_plans())
    raw["starter"]["meters"]["doc.upload"]["stripe_price_id"] = ""
    settings.BILLING_PLANS = raw
    assert "doc.upload" not in plans.plan_price_ids("starter")
    assert plans.tier_for_price_ids([""]) is None
