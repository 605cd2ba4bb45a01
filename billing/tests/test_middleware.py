import logging
import uuid

import pytest
from django.core.handlers.base import BaseHandler
from django.db import connection
from django.http import JsonResponse
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from django.utils.module_loading import import_string

from billing import ingest, middleware
from billing.models import BillingEvent
from cases.models import Case, Client
from cases.tests.factories import CaseFactory
from tenancy.context import cross_tenant
from tenancy.testing import bearer_client
from tenancy.tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def test_one_get_creates_exactly_one_event(api, org, owner):
    response = api.get("/api/v1/cases/")
    assert response.status_code == 200
    request_id = response["X-Server-Request-ID"]
    assert uuid.UUID(request_id).version == 7
    assert response["X-Request-ID"] == request_id  # no client id: the server's is echoed
    event = BillingEvent.objects.get()
    assert event.organization_id == org.pk
    assert event.user_id == owner.pk
    assert (event.event_type, event.event_name, event.unit) == ("api", "api.request", "call")
    assert event.request_id == request_id
    dims = event.dimensions
    assert dims["endpoint"] == "/api/v1/cases/"
    assert dims["route"] == "/api/v1/cases/"
    assert dims["method"] == "GET"
    assert dims["status_code"] == 200
    assert "client_request_id" not in dims  # the client sent none
    assert isinstance(dims["duration_ms"], float) and dims["duration_ms"] > 0


def test_duration_is_positive_even_without_the_timer(org, owner, rf, monkeypatch):
    """``elapsed_ms`` is 0.0 for a request RequestTimerMiddleware never saw, and a
    sub-microsecond one rounds to 0.0: the recorded duration_ms is still 0.001."""
    response = JsonResponse({}, status=200)
    usage = middleware.UsageMiddleware(lambda request: response)

    def request_without_timer(request_id):
        request = rf.get("/api/v1/cases/")
        request.resolver_match = resolve("/api/v1/cases/")
        assert not hasattr(request, "start_time")
        request.organization, request.user, request.request_id = org, owner, request_id
        return request

    assert usage(request_without_timer("no-timer")) is response
    monkeypatch.setattr(middleware, "elapsed_ms", lambda request: 0.0004)
    usage(request_without_timer("too-fast"))
    durations = dict(BillingEvent.objects.values_list("request_id", "dimensions__duration_ms"))
    assert durations == {"no-timer": 0.001, "too-fast": 0.001}


def test_route_is_the_url_pattern(api, org):
    case = CaseFactory(organization=org)
    assert api.get(f"/api/v1/cases/{case.pk}/").status_code == 200
    event = BillingEvent.objects.get()
    assert event.dimensions["endpoint"] == f"/api/v1/cases/{case.pk}/"
    assert event.dimensions["route"] == "/api/v1/cases/{pk}/"


def test_client_request_id_is_echoed_and_stored_but_is_not_the_billing_key(api):
    response = api.get("/api/v1/cases/", HTTP_X_REQUEST_ID="client-abc-1")
    assert response["X-Request-ID"] == "client-abc-1"
    event = BillingEvent.objects.get()
    assert event.request_id == response["X-Server-Request-ID"] != "client-abc-1"
    assert event.dimensions["client_request_id"] == "client-abc-1"


def test_n_different_requests_sharing_one_x_request_id_are_n_events(api, org):
    """A client that always sends the same X-Request-ID is billed for every request it is
    served: POSTs with different bodies, GETs on different paths, PATCHes."""
    client_id = Client.objects.create(organization=org, name="C").pk
    responses = [
        api.post(
            "/api/v1/cases/",
            {"client": str(client_id), "title": f"T{i}", "reference_number": f"EV-{i}"},
            format="json",
            HTTP_X_REQUEST_ID="evade-1",
        )
        for i in range(6)
    ]
    case_id = responses[0].json()["id"]
    for path in ("/api/v1/cases/", "/api/v1/clients/", f"/api/v1/cases/{case_id}/"):
        responses.append(api.get(path, HTTP_X_REQUEST_ID="evade-1"))
    for i in range(2):
        responses.append(
            api.patch(
                f"/api/v1/cases/{case_id}/",
                {"title": f"P{i}"},
                format="json",
                HTTP_X_REQUEST_ID="evade-1",
            )
        )
    assert all(200 <= r.status_code < 300 for r in responses), [r.status_code for r in responses]
    assert all(r["X-Request-ID"] == "evade-1" for r in responses)
    assert Case.objects.count() == 6
    events = list(BillingEvent.objects.filter(event_name="api.request"))
    assert len(events) == len(responses) == 11
    assert {e.request_id for e in events} == {r["X-Server-Request-ID"] for r in responses}
    assert {e.dimensions["client_request_id"] for e in events} == {"evade-1"}


def test_unrouted_api_paths_are_not_billed(api, settings):
    """The JSON 404 catch-all answers unknown /api/ paths (and /api/v1/cases without the
    slash): nothing was served, so nothing is billed."""
    for path in ("/api/v1/nonexistent/", "/api/v1/cases", "/api/v2/cases/"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    assert api.post("/api/v1/nonexistent/", {}, format="json").status_code == 404
    assert BillingEvent.objects.count() == 0
    settings.BILLABLE_ROUTES = ["/"]  # even when every path is billable
    assert api.get("/nowhere/").status_code == 404
    assert BillingEvent.objects.count() == 0
    assert api.get("/api/v1/cases/").status_code == 200  # control: a real route is billed
    assert BillingEvent.objects.count() == 1


def test_write_requests_are_billed_with_their_status(api, org):
    client_id = Client.objects.create(organization=org, name="C").pk
    response = api.post(
        "/api/v1/cases/",
        {"client": str(client_id), "title": "T", "reference_number": "R-1"},
        format="json",
    )
    assert response.status_code == 201
    bad = api.post("/api/v1/cases/", {"title": ""}, format="json")
    assert bad.status_code == 400
    codes = sorted(e.dimensions["status_code"] for e in BillingEvent.objects.all())
    assert codes == [201, 400]


def test_anonymous_and_bad_token_are_not_billed(anon_api, org):
    assert anon_api.get("/api/v1/cases/").status_code == 401
    anon_api.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert anon_api.get("/api/v1/cases/").status_code == 401
    assert BillingEvent.objects.count() == 0


def test_successful_anonymous_request_on_a_billable_route_is_not_billed(
    anon_api, owner, settings, caplog
):
    """The token endpoint answers 200 to an anonymous caller under /api/v1/ (billable
    prefix): no organization, so no event, and no write even attempted (an attempt
    without an organization would fail validation and count a write failure)."""
    path = "/api/v1/auth/token/"
    assert any(path.startswith(prefix) for prefix in settings.BILLABLE_ROUTES)
    before = middleware.write_failures()
    with caplog.at_level(logging.ERROR, logger="billing.metering"):
        response = anon_api.post(path, {"email": owner.email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["access"]
    assert BillingEvent.objects.count() == 0
    assert middleware.write_failures() == before
    assert not [r for r in caplog.records if r.name == "billing.metering"]


def test_foreign_organization_header_is_403_and_not_billed(api, outsider_org):
    response = api.get("/api/v1/cases/", HTTP_X_ORGANIZATION_ID=str(outsider_org.pk))
    assert response.status_code == 403
    assert BillingEvent.objects.count() == 0


@pytest.mark.parametrize("path", ["/health/", "/api/docs/", "/api/schema/", "/admin/"])
def test_excluded_paths_are_not_billed_even_when_billable_routes_is_everything(api, settings, path):
    settings.BILLABLE_ROUTES = ["/"]
    response = api.get(path)
    assert response.status_code in (200, 302)
    assert BillingEvent.objects.count() == 0
    # control: with the same settings a normal API call is billed
    api.get("/api/v1/cases/")
    assert BillingEvent.objects.count() == 1


def test_static_and_media_are_not_billed(api, settings):
    settings.BILLABLE_ROUTES = ["/"]
    api.get("/static/x.css")
    api.get("/media/x.pdf")
    assert BillingEvent.objects.count() == 0


def test_non_billable_route_is_not_billed(api, settings):
    settings.BILLABLE_ROUTES = ["/api/v2/"]
    assert api.get("/api/v1/cases/").status_code == 200
    assert BillingEvent.objects.count() == 0


@pytest.mark.urls("billing.tests.urls_metering")
@pytest.mark.parametrize("code", [401, 403, 429, 500, 502, 503])
def test_unbilled_statuses(api, code):
    assert api.get(f"/api/v1/test-status/{code}/").status_code == code
    assert BillingEvent.objects.count() == 0


@pytest.mark.urls("billing.tests.urls_metering")
@pytest.mark.parametrize("code", [200, 204, 400, 404, 409, 422])
def test_billed_statuses(api, code):
    assert api.get(f"/api/v1/test-status/{code}/").status_code == code
    event = BillingEvent.objects.get()
    assert event.dimensions["status_code"] == code
    assert event.dimensions["route"] == "/api/v1/test-status/{code}/"


@pytest.mark.urls("billing.tests.urls_metering")
def test_unbilled_statuses_are_configurable(api, settings):
    settings.BILLING_UNBILLED_STATUSES = ["4xx"]
    api.get("/api/v1/test-status/409/")
    api.get("/api/v1/test-status/401/")
    api.get("/api/v1/test-status/201/")
    assert BillingEvent.objects.count() == 1
    assert BillingEvent.objects.get().dimensions["status_code"] == 201


@pytest.mark.urls("billing.tests.urls_metering")
def test_view_with_savepoint_rollback_and_4xx_is_billed_once(api, org):
    """A real unique violation inside the view's savepoint (PostgreSQL's failed-transaction
    state, cleared by the savepoint rollback): the 400 is billed once, in the request's
    transaction, and the writes the view made before the savepoint are kept."""
    response = api.post("/api/v1/test-savepoint/", HTTP_X_REQUEST_ID="sp-1")
    assert response.status_code == 400, response.content
    assert response.json()["sqlstate"] == "23505"  # unique_violation, from PostgreSQL
    event = BillingEvent.objects.get()
    assert (event.request_id, event.organization_id) == (response["X-Server-Request-ID"], org.pk)
    assert event.dimensions["client_request_id"] == "sp-1"
    assert event.dimensions["status_code"] == 400
    assert list(Client.objects.values_list("name", flat=True)) == ["kept"]
    assert list(Case.objects.values_list("reference_number", "title")) == [("SP-1", "first")]


@pytest.mark.urls("billing.tests.urls_metering")
def test_a_view_answering_on_an_aborted_transaction_gets_500_and_nothing_is_kept(api, caplog):
    """PostgreSQL would turn the COMMIT of an aborted transaction into a ROLLBACK: the
    client is told (500), not billed, and the view's write is gone; the billing write
    was not even attempted on the dead transaction (logged as not written)."""
    with caplog.at_level(logging.ERROR):
        response = api.post("/api/v1/test-aborted/", HTTP_X_REQUEST_ID="ab-1")
    assert response.status_code == 500
    assert response.json()["code"] == "transaction_aborted"
    assert not Client.objects.filter(name="lost").exists()
    assert BillingEvent.objects.count() == 0
    assert any("aborted transaction" in r.getMessage() for r in caplog.records)


def test_nonexistent_object_404_is_billed(api):
    assert api.get(f"/api/v1/cases/{uuid.uuid4()}/").status_code == 404
    assert BillingEvent.objects.get().dimensions["route"] == "/api/v1/cases/{pk}/"


def test_write_failure_keeps_response_and_data_logs_and_counts(api, org, settings, caplog):
    # A price that overflows PostgreSQL's integer column: a real DataError on INSERT.
    settings.BILLING_PRICE_BOOK = {"api.request": 3_000_000_000}
    before = middleware.write_failures()
    with caplog.at_level(logging.ERROR, logger="billing.metering"):
        response = api.post("/api/v1/clients/", {"name": "Kept"}, HTTP_X_REQUEST_ID="fail-1")
    assert response.status_code == 201
    assert Client.objects.filter(organization=org, name="Kept").exists()
    assert BillingEvent.objects.count() == 0
    assert middleware.write_failures() == before + 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "fail-1" in errors[0].getMessage()
    assert response["X-Server-Request-ID"] in errors[0].getMessage()
    assert errors[0].client_request_id == "fail-1"
    assert errors[0].request_id == response["X-Server-Request-ID"]


def middleware_chain() -> list[type]:
    """The classes of the middleware a new handler really runs, outermost first: walk
    ``BaseHandler._middleware_chain`` (each link is ``convert_exception_to_response``'s
    wrapper, whose ``__wrapped__`` is the middleware instance, whose ``get_response`` is
    the next link) down to the handler's own ``_get_response``."""
    handler = BaseHandler()
    handler.load_middleware()
    classes = []
    link = handler._middleware_chain
    while True:
        instance = link.__wrapped__
        if getattr(instance, "__self__", None) is handler:  # handler._get_response
            return classes
        classes.append(type(instance))
        link = instance.get_response


def test_disabled_metering_removes_the_middleware(owner, settings):
    expected = [import_string(path) for path in settings.MIDDLEWARE]
    assert expected[-1] is middleware.UsageMiddleware
    with override_settings(BILLING_METERING_ENABLED=True):
        assert middleware_chain() == expected  # control: the walk sees every middleware
    settings.BILLING_METERING_ENABLED = False
    assert middleware_chain() == expected[:-1]  # MiddlewareNotUsed: not in the chain
    client = bearer_client(owner)  # a new client builds a new handler
    assert client.get("/api/v1/cases/").status_code == 200
    assert BillingEvent.objects.count() == 0


def test_queries_per_metered_request(owner, settings):
    """Metering adds exactly one query (one round trip): ``SAVEPOINT; INSERT ... ON
    CONFLICT DO NOTHING; RELEASE SAVEPOINT`` sent together."""

    def run(client) -> list[str]:
        client.get("/api/v1/cases/")  # warm-up (handler, token)
        with CaptureQueriesContext(connection) as ctx:
            client.get("/api/v1/cases/")
        # copy now: the next request's request_started signal resets the query log
        return [q["sql"] for q in ctx.captured_queries]

    settings.BILLING_METERING_ENABLED = False
    off = run(bearer_client(owner))
    settings.BILLING_METERING_ENABLED = True
    on = run(bearer_client(owner))

    assert len(on) - len(off) == 1
    assert not [sql for sql in off if "billing_events" in sql]
    billing = [sql for sql in on if "billing_events" in sql]
    assert len(billing) == 1
    assert billing[0].startswith("SAVEPOINT gl_billing_event; INSERT INTO billing_events (")
    assert billing[0].endswith(f"{ingest.ON_CONFLICT}; RELEASE SAVEPOINT gl_billing_event")
    print(f"queries per request: {len(off)} unmetered, {len(on)} metered")


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("api/v1/^cases/$", "/api/v1/cases/"),
        ("api/v1/^cases/(?P<pk>[^/.]+)/$", "/api/v1/cases/{pk}/"),
        (
            "api/v1/usage-summary/<uuid:organization_id>/",
            "/api/v1/usage-summary/{organization_id}/",
        ),
        ("api/v1/x/(?P<a>(ab|cd)+)/<slug>/", "/api/v1/x/{a}/{slug}/"),
        (None, None),
    ],
)
def test_route_template(route, expected):
    assert middleware.route_template(route) == expected


def test_event_goes_to_the_organization_of_the_request(org, outsider_org):
    """A member of two organizations acting for one (X-Organization-ID) bills that one."""
    from tenancy.tests.factories import MembershipFactory, member_of

    user = member_of(org, email="both@example.test")
    MembershipFactory(organization=outsider_org, user=user)
    client = bearer_client(user)
    client.get("/api/v1/cases/", HTTP_X_ORGANIZATION_ID=str(outsider_org.pk))
    client.get("/api/v1/cases/")
    assert sorted(
        BillingEvent.objects.values_list("organization_id", flat=True), key=str
    ) == sorted([org.pk, outsider_org.pk], key=str)


@pytest.mark.rls_raw
def test_event_is_written_inside_the_tenant_context(api, org, settings):
    """With row-level security enforced, the billing_events policy (WITH CHECK
    organization_id = app.current_org) admits the middleware's insert only because it
    runs inside the request's tenant context; the same write outside one is refused."""
    from django.db import DatabaseError, transaction

    from billing.services import event_record
    from tenancy.context import tenant_context

    settings.RLS_ENABLED = True
    before = middleware.write_failures()
    response = api.get("/api/v1/cases/")
    assert response.status_code == 200
    assert middleware.write_failures() == before
    with tenant_context(org):
        assert BillingEvent.objects.get().request_id == response["X-Request-ID"]
    # control: with no organization in context (and RLS on) the write is refused
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('app.current_org', '', true), "
            "set_config('app.rls_enabled', 'on', true), set_config('app.cross_tenant', '', true)"
        )
    with pytest.raises(DatabaseError), transaction.atomic():
        event_record(organization=org, event_name="api.request", request_id="no-context")
    with tenant_context(org):
        assert event_record(organization=org, event_name="api.request", request_id="ctx")


def test_a_nul_in_the_path_is_still_billed_with_the_nul_replaced(owner):
    """``jsonb`` cannot hold ``\\u0000``: a request path with a NUL (``%00``) on a real route
    is billed like any other, its ``endpoint`` showing U+FFFD, and no write fails."""
    from billing.middleware import write_failures

    failures = write_failures()
    response = bearer_client(owner).get("/api/v1/cases/%00/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert write_failures() == failures
    with cross_tenant(reason="test: read back"):
        [event] = BillingEvent.objects.filter(event_name="api.request")
    assert event.dimensions["endpoint"] == "/api/v1/cases/\ufffd/"
    assert event.dimensions["route"] == "/api/v1/cases/{pk}/"
