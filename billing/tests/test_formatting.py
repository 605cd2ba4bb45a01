"""Money, quantities and counts as staff read them; the billing events admin at 1366 px."""

import re
from decimal import Decimal

import pytest
from django.template import Context, Template

from billing.formatting import counted, format_cents, format_quantity
from billing.tests.factories import BillingEventFactory
from tenancy.tests.factories import UserFactory


@pytest.mark.parametrize(
    "cents, text",
    [
        (0, "$0.00"),
        (5, "$0.05"),
        (100, "$1.00"),
        (123456, "$1,234.56"),
        (100000000, "$1,000,000.00"),
        (-250, "-$2.50"),
        (None, "-"),
    ],
)
def test_format_cents(cents, text):
    assert format_cents(cents) == text


@pytest.mark.parametrize(
    "quantity, text",
    [
        (Decimal("21.0000"), "21"),
        (Decimal("1234.5000"), "1,234.5"),
        (Decimal("0.2500"), "0.25"),
        (Decimal("0.0001"), "0.0001"),
        (Decimal("1E+3"), "1,000"),
        (Decimal("0"), "0"),
        (7, "7"),
        (None, "-"),
    ],
)
def test_format_quantity(quantity, text):
    assert format_quantity(quantity) == text


def test_counted():
    assert counted(0, "event") == "0 events"
    assert counted(1, "event") == "1 event"
    assert counted(2, "event") == "2 events"
    assert counted(1234, "event") == "1,234 events"
    assert counted(2, "day", "days") == "2 days"


def test_template_filters():
    template = Template(
        '{% load billing_format %}{{ c|money }} {{ q|qty }} {{ n|counted:"event" }} '
        '{{ one|counted:"entry,entries" }} {{ two|counted:"entry,entries" }}'
    )
    text = template.render(
        Context({"c": 123456, "q": Decimal("21.0000"), "n": 1, "one": 1, "two": 2})
    )
    assert text == "$1,234.56 21 1 event 1 entry 2 entries"


@pytest.fixture
def staff_client(client, db):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_billing_event_list_has_six_short_columns(staff_client, org):
    BillingEventFactory(organization=org, quantity="3.0000", unit="page", unit_cost_cents=1234)
    BillingEventFactory(organization=org, quantity="1.0000", unit="call", unit_cost_cents=None)
    response = staff_client.get("/admin/billing/billingevent/")
    assert response.status_code == 200
    html = response.content.decode()
    columns = re.findall(r'<th scope="col" class="(?:sortable )?column-([a-z_]+)', html)
    assert columns == [
        "created_at",
        "organization",
        "event_name",
        "quantity_with_unit",
        "unit_price",
        "status",
    ]
    assert ">3 pages<" in html and ">1 call<" in html
    assert ">$12.34<" in html
    assert "3.0000" not in html


def test_billing_event_page_shows_amount_and_dimensions_as_a_table(staff_client, org):
    event = BillingEventFactory(
        organization=org,
        quantity="2.5000",
        unit="page",
        unit_cost_cents=3,
        dimensions={"route": "/api/v1/cases/", "status_code": 201, "extra": {"a": [1]}},
    )
    html = staff_client.get(f"/admin/billing/billingevent/{event.pk}/change/").content.decode()
    assert "<table class='dimensions'>" in html
    assert "<tr><th scope='row'>route</th><td>/api/v1/cases/</td></tr>" in html
    assert "<tr><th scope='row'>status_code</th><td>201</td></tr>" in html
    assert "<tr><th scope='row'>extra</th><td>{&quot;a&quot;: [1]}</td></tr>" in html
    assert "$0.08" in html  # 2.5 x 3 cents = 7.5, rounded half-up once
    assert event.request_id in html
