"""Stable pagination: every list endpoint pages over a total order, so a client walking
all pages sees each object exactly once, also when the ordering field ties everywhere
(many rows with one timestamp, one name), with the default ordering and every
``?ordering=`` a client may choose."""

import re
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import BillingEvent
from billing.tests.factories import BillingEventFactory
from cases.apis import CaseViewSet, ClientViewSet, DocumentViewSet
from cases.models import Case, Client, Document
from core.pagination import stable_order
from tenancy.models import Membership
from tenancy.testing import bearer_client
from tenancy.tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

ROWS = 23
PAGE = 4
TIE = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def orderings(fields) -> list[str | None]:
    return [None, *fields, *(f"-{field}" for field in fields)]


def walk(api, path: str, ordering: str | None) -> list[str]:
    """The ids of every page of ``path`` (which may carry a query string), in the order
    served."""
    query = f"page_size={PAGE}" + (f"&ordering={ordering}" if ordering else "")
    url, ids = f"{path}{'&' if '?' in path else '?'}{query}", []
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        ids += [row["id"] for row in body["results"]]
        url = body["next"]
    return ids


def last_order_term(ctx, table: str) -> str:
    selects = [q["sql"] for q in ctx.captured_queries if f'FROM "{table}"' in q["sql"]]
    order = [re.search(r"ORDER BY (.*?)(?: LIMIT|$)", sql) for sql in selects]
    terms = [m.group(1).split(", ")[-1] for m in order if m]
    assert terms, selects
    return terms[-1]


@pytest.fixture
def tied(org, owner):
    """ROWS clients, cases, documents and billing events of ``org`` that tie on every
    ordering field but their primary key (and the unique reference number)."""
    clients = Client.objects.bulk_create(
        Client(organization=org, name="Same Name", created_at=TIE) for _ in range(ROWS)
    )
    Case.objects.bulk_create(
        Case(
            organization=org,
            client=clients[0],
            title="Same Title",
            reference_number=f"T-{i:03d}",
            opened_at=TIE,
        )
        for i in range(ROWS)
    )
    case = Case.objects.filter(organization=org).first()
    Document.objects.bulk_create(
        Document(
            organization=org,
            case=case,
            file="documents/same.txt",
            original_filename="same.txt",
            size_bytes=5,
            uploaded_at=TIE,
        )
        for _ in range(ROWS)
    )
    # doc.upload: the walk's own GETs add api.request events, newest first
    BillingEventFactory.create_batch(
        ROWS, organization=org, event_name="doc.upload", event_type="document", created_at=TIE
    )
    return org


@pytest.mark.parametrize(
    ("path", "model", "fields"),
    [
        ("/api/v1/clients/", Client, ClientViewSet.ordering_fields),
        ("/api/v1/cases/", Case, CaseViewSet.ordering_fields),
        ("/api/v1/documents/", Document, DocumentViewSet.ordering_fields),
        ("/api/v1/billing/events/?event_name=doc.upload", BillingEvent, ["created_at"]),
    ],
)
def test_walking_every_page_sees_each_object_once(tied, owner, path, model, fields):
    api = bearer_client(owner)
    rows = model.objects.filter(organization=tied)
    if model is BillingEvent:
        rows = rows.filter(event_name="doc.upload")
    expected = sorted(str(pk) for pk in rows.values_list("pk", flat=True))
    for ordering in orderings(fields):
        with CaptureQueriesContext(connection) as ctx:
            ids = walk(api, path, ordering)
        assert len(ids) == len(set(ids)) == ROWS, (ordering, len(ids), len(set(ids)))
        assert sorted(ids) == expected
        # the SQL really ends its ORDER BY with the primary key (a tie can never be left
        # to the plan), in the direction of the term before it
        term = last_order_term(ctx, model._meta.db_table)
        assert term.startswith(f'"{model._meta.db_table}"."id"'), (ordering, term)
        assert walk(api, path, ordering) == ids  # and the order is the same every time


def test_organizations_list_is_stable(owner, org):
    """The caller's memberships, ordered by organization name: many firms of one name."""
    for i in range(ROWS - 1):
        MembershipFactory(
            organization=OrganizationFactory(name="Acme Law", slug=f"acme-law-{i}"), user=owner
        )
    api = bearer_client(owner, org)
    with CaptureQueriesContext(connection) as ctx:
        ids = walk(api, "/api/v1/organizations/", None)
    assert len(ids) == len(set(ids)) == ROWS
    assert sorted(ids) == sorted(Membership.objects.filter(user=owner).values_list("id", flat=True))
    assert last_order_term(ctx, "tenancy_membership").startswith('"tenancy_membership"."id"')


def test_stable_order_keeps_an_order_that_ends_in_the_primary_key():
    events = BillingEvent.objects.order_by("-created_at", "-id")
    assert stable_order(events) is events
    assert stable_order([1, 2]) == [1, 2]
    assert stable_order(Client.objects.all()).query.order_by == ("name", "pk")
    assert stable_order(Case.objects.order_by("-opened_at")).query.order_by == ("-opened_at", "-pk")


def test_walking_the_events_list_with_an_end_before_the_walk_sees_each_event_once(tied, owner):
    """Each page's GET adds an ``api.request`` event at the head of the list (newest
    first), so an unpinned walk repeats an event on every page; with ``end`` before the
    walk (README, "Lists are paginated") the pages do not move."""
    api = bearer_client(owner)
    before = BillingEvent.objects.filter(organization=tied)
    expected = sorted(str(pk) for pk in before.values_list("pk", flat=True))
    unpinned = walk(api, "/api/v1/billing/events/", None)
    assert len(unpinned) > len(set(unpinned))  # the defect the pinned walk avoids
    pinned = walk(api, "/api/v1/billing/events/?end=2026-11-02T09:31:00Z", None)
    assert len(pinned) == len(set(pinned)) == ROWS
    assert sorted(pinned) == expected
