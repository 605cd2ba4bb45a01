"""``Idempotency-Key`` on the tenant API's writes (``billing.idempotency``), through the
real middleware stack and PostgreSQL: replay, reuse, in-progress race, validation,
storage rules, per-organization keys, expiry and purge, billing and rate limits."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.idempotency import keys, purge
from billing.models import BillingEvent, IdempotencyKey
from cases.models import Case, Client
from tenancy import ratelimit
from tenancy.context import cross_tenant, tenant_context
from tenancy.testing import bearer_client, with_rate_limits
from tenancy.tests.factories import OrganizationFactory, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme_client(org):
    return Client.objects.create(organization=org, name="Jane Roe")


def create_case(api, client, reference="GL-1", key="key-1", **headers):
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.post(
        "/api/v1/cases/",
        {"client": str(client.pk), "title": "Roe", "reference_number": reference},
        format="json",
        **headers,
    )


def api_events():
    return BillingEvent.objects.filter(event_name="api.request")


def test_a_retry_replays_the_stored_answer_without_running_or_billing_again(api, org, acme_client):
    first = create_case(api, acme_client)
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first
    again = create_case(api, acme_client, HTTP_X_REQUEST_ID="retry-1")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"] == "application/json"
    assert again["X-Request-ID"] == "retry-1"  # the replay still carries its own ids
    assert again["X-Server-Request-ID"] != first["X-Server-Request-ID"]
    assert Case.objects.count() == 1
    assert api_events().count() == 1
    stored = IdempotencyKey.objects.get()
    assert (stored.organization_id, stored.key, stored.status_code) == (org.pk, "key-1", 201)
    assert stored.request_id == first["X-Server-Request-ID"]
    assert stored.expires_at - stored.created_at == timedelta(hours=24)


def test_the_same_key_with_another_request_is_422_and_nothing_runs(api, acme_client):
    assert create_case(api, acme_client, reference="GL-1").status_code == 201
    other_body = create_case(api, acme_client, reference="GL-2")
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"
    other_path = api.post("/api/v1/clients/", {"name": "X"}, HTTP_IDEMPOTENCY_KEY="key-1")
    assert other_path.status_code == 422
    other_query = api.post(
        "/api/v1/cases/?x=1",
        {"client": str(acme_client.pk), "title": "Roe", "reference_number": "GL-1"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="key-1",
    )
    assert other_query.status_code == 422
    assert Case.objects.count() == 1
    assert Client.objects.count() == 1
    assert api_events().count() == 1


def test_another_user_of_the_organization_reusing_a_key_is_422(api, org, acme_client):
    assert create_case(api, acme_client).status_code == 201
    colleague = bearer_client(member_of(org, email="colleague@acme.test"))
    response = create_case(colleague, acme_client)
    assert response.status_code == 422
    assert Case.objects.count() == 1


def test_keys_are_per_organization(api, acme_client, outsider, outsider_org):
    their_client = Client.objects.create(organization=outsider_org, name="Other")
    outsider_api = bearer_client(outsider)
    ours = create_case(api, acme_client, key="shared")
    theirs = create_case(outsider_api, their_client, key="shared")
    assert (ours.status_code, theirs.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in theirs
    assert ours.json()["id"] != theirs.json()["id"]
    for client_api, client in ((api, acme_client), (outsider_api, their_client)):
        replay = create_case(client_api, client, key="shared")
        assert replay["Idempotent-Replayed"] == "true"
    assert create_case(outsider_api, their_client, key="shared").json()["id"] == theirs.json()["id"]
    assert Case.objects.count() == 2
    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == ["shared", "shared"]


@pytest.mark.rls_raw
def test_stored_keys_are_tenant_rows_under_row_level_security(api, org, settings):
    settings.RLS_ENABLED = True
    with tenant_context(org):
        client = Client.objects.create(organization=org, name="C")
    assert create_case(api, client, key="rls-1").status_code == 201
    with tenant_context(org):
        assert IdempotencyKey.objects.filter(key="rls-1").count() == 1
    other = OrganizationFactory.build()
    with cross_tenant(reason="test set-up"):
        other.save()
    with tenant_context(other):
        assert IdempotencyKey.objects.count() == 0


@pytest.mark.parametrize("value", ["", "   ", "k" * 256, "caf\u00e9", "tab\there", '""'], ids=repr)
def test_a_malformed_key_is_400(api, acme_client, value):
    response = create_case(api, acme_client, key=value)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"
    assert Case.objects.count() == 0
    assert api_events().count() == 0


def test_key_forms(api, acme_client):
    """A bare key and the draft's Structured Field String of the same key are one key;
    255 printable ASCII characters (spaces inside included) are accepted."""
    assert create_case(api, acme_client, key='"quoted-1"').status_code == 201
    assert create_case(api, acme_client, key="quoted-1")["Idempotent-Replayed"] == "true"
    longest = "a b~" + "k" * 251
    assert create_case(api, acme_client, reference="GL-2", key=longest).status_code == 201
    assert IdempotencyKey.objects.filter(key=longest).exists()


def test_a_4xx_is_stored_and_replayed(api, acme_client):
    bad = api.post("/api/v1/cases/", {"title": ""}, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert bad.status_code == 400
    again = api.post("/api/v1/cases/", {"title": ""}, format="json", HTTP_IDEMPOTENCY_KEY="bad-1")
    assert (again.status_code, again["Idempotent-Replayed"]) == (400, "true")
    assert again.json() == bad.json()
    assert api_events().count() == 1  # the 400 was served (billed) once


@pytest.mark.urls("billing.tests.urls_metering")
def test_a_5xx_is_not_stored_and_the_retry_runs_again(api):
    for _ in range(2):
        response = api.post("/api/v1/test-status/503/", HTTP_IDEMPOTENCY_KEY="fail-1")
        assert response.status_code == 503
        assert "Idempotent-Replayed" not in response
    assert not IdempotencyKey.objects.exists()
    ok = api.post("/api/v1/test-status/200/", HTTP_IDEMPOTENCY_KEY="fail-1")
    assert ok.status_code == 200  # the key is still free: nothing was stored for it


@pytest.mark.urls("billing.tests.urls_metering")
def test_a_view_that_raised_stores_nothing(api):
    response = api.post("/api/v1/test-aborted/", HTTP_IDEMPOTENCY_KEY="aborted-1")
    assert response.status_code == 500
    assert not IdempotencyKey.objects.exists()


def test_delete_and_location_headers_are_replayed(api, org, acme_client):
    case = Case.objects.create(
        organization=org, client=acme_client, title="T", reference_number="D"
    )
    first = api.delete(f"/api/v1/cases/{case.pk}/", HTTP_IDEMPOTENCY_KEY="del-1")
    again = api.delete(f"/api/v1/cases/{case.pk}/", HTTP_IDEMPOTENCY_KEY="del-1")
    assert (first.status_code, again.status_code) == (204, 204)
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == b""
    assert IdempotencyKey.objects.get(key="del-1").response_headers == {
        name: first[name] for name in keys.STORED_HEADERS if name in first
    }


def test_get_and_head_ignore_the_header_and_are_billed_each_time(api):
    for _ in range(2):
        assert api.get("/api/v1/cases/", HTTP_IDEMPOTENCY_KEY="get-1").status_code == 200
        assert "Idempotent-Replayed" not in api.head("/api/v1/cases/", HTTP_IDEMPOTENCY_KEY="get-1")
    assert not IdempotencyKey.objects.exists()
    assert api_events().count() == 4


def test_requests_without_organization_ignore_the_header(anon_api, owner):
    from tenancy.tests.factories import PASSWORD

    body = {"email": owner.email, "password": PASSWORD}
    for _ in range(2):
        response = anon_api.post("/api/v1/auth/token/", body, HTTP_IDEMPOTENCY_KEY="tok")
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response
    assert not IdempotencyKey.objects.exists()


def test_an_expired_key_is_free_again(api, acme_client, settings):
    assert create_case(api, acme_client, reference="GL-1", key="old").status_code == 201
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    reused = create_case(api, acme_client, reference="GL-2", key="old")
    assert reused.status_code == 201
    assert "Idempotent-Replayed" not in reused
    assert IdempotencyKey.objects.get().fingerprint != ""
    assert Case.objects.count() == 2


def test_ttl_comes_from_the_setting(api, acme_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 2
    create_case(api, acme_client)
    stored = IdempotencyKey.objects.get()
    assert stored.expires_at - stored.created_at == timedelta(hours=2)


def test_queries_a_key_costs(api, acme_client):
    """No header: no query of the idempotency table. A first try: one round trip more than
    without a key (the claim: lock and lookup); the stored answer travels in the same
    message as the usage event. A replay: the claim only, and no billing event."""

    def queries(**kwargs) -> list[str]:
        with CaptureQueriesContext(connection) as ctx:
            response = create_case(api, acme_client, **kwargs)
        assert response.status_code == 201, response.content
        return [q["sql"] for q in ctx.captured_queries]

    plain = queries(reference="Q-0", key=None)
    first = queries(reference="Q-1", key="q-1")
    replay = queries(reference="Q-1", key="q-1")
    assert not [sql for sql in plain if "idempotency" in sql]
    keyed = [sql for sql in first if "billing_idempotency_keys" in sql]
    assert len(keyed) == 2
    assert keyed[0].startswith("SELECT pg_try_advisory_xact_lock(")
    assert keyed[1].startswith('INSERT INTO "billing_idempotency_keys"')
    assert 'ON CONFLICT("organization_id", "key") DO UPDATE' in keyed[1]
    assert "; SAVEPOINT gl_billing_event; INSERT INTO billing_events (" in keyed[1]
    assert len(first) == len(plain) + 1
    assert not [sql for sql in replay if "billing_events" in sql]
    assert len([sql for sql in replay if "billing_idempotency_keys" in sql]) == 1
    assert len(replay) < len(plain)
    print(f"queries: plain {len(plain)}, first try {len(first)}, replay {len(replay)}")


def test_a_failed_usage_event_keeps_the_stored_answer(api, acme_client, settings, caplog):
    """The event and the stored answer share a round trip, not a fate: a real DataError
    on the event (a price overflowing its integer column) is the usage middleware's
    failure (counted, logged); the case and its stored answer are kept."""
    from billing import middleware

    settings.BILLING_PRICE_BOOK = {"api.request": 3_000_000_000}
    before = middleware.write_failures()
    with caplog.at_level("ERROR", logger="billing.metering"):
        first = create_case(api, acme_client, key="ev-fail")
    assert first.status_code == 201, first.content
    assert middleware.write_failures() == before + 1
    assert any("billing event not written" in r.getMessage() for r in caplog.records)
    assert api_events().count() == 0
    assert Case.objects.count() == 1
    assert create_case(api, acme_client, key="ev-fail")["Idempotent-Replayed"] == "true"


def test_an_answer_that_cannot_be_stored_fails_the_request(api, acme_client, monkeypatch):
    """If the stored answer is not written, a retry would run the request again: so the
    request fails (500) and its writes, and its event, roll back. The failure is a real
    NOT NULL violation in PostgreSQL."""
    monkeypatch.setattr(
        keys,
        "_store_statement",
        lambda row: ("INSERT INTO billing_idempotency_keys (organization_id) VALUES (NULL)", []),
    )
    api.raise_request_exception = False
    response = create_case(api, acme_client, key="lost")
    assert response.status_code == 500
    assert Case.objects.count() == 0
    assert api_events().count() == 0
    assert not IdempotencyKey.objects.exists()


def test_replays_count_against_the_rate_limit(settings, db):
    settings.BILLING_PLANS = with_rate_limits(settings.BILLING_PLANS, {"starter": {"api": 3}})
    settings.REDIS_URL = ""
    ratelimit.reset_limiter()
    try:
        org = OrganizationFactory(plan_tier="starter")
        client = bearer_client(member_of(org))
        body = {"name": "Once"}
        statuses = [
            client.post("/api/v1/clients/", body, HTTP_IDEMPOTENCY_KEY="rl").status_code
            for _ in range(4)
        ]
        assert statuses == [201, 201, 201, 429]
        assert Client.objects.filter(organization=org).count() == 1
    finally:
        ratelimit.reset_limiter()


def stored_key(organization, key: str, expires_at) -> IdempotencyKey:
    """An unsaved stored answer (201) of ``key`` expiring at ``expires_at``."""
    return IdempotencyKey(
        organization=organization,
        key=key,
        fingerprint="f",
        method="POST",
        path="/",
        status_code=201,
        expires_at=expires_at,
    )


def test_purge_deletes_expired_keys_in_batches(api, org, acme_client, outsider_org):
    now = timezone.now()
    IdempotencyKey.objects.bulk_create(
        stored_key(o, f"k{i}", now + timedelta(hours=-1 if i < 5 else 1))
        for o in (org, outsider_org)
        for i in range(8)
    )
    assert purge.idempotency_key_purge_expired(now=now, dry_run=True) == 10
    assert IdempotencyKey.objects.count() == 16
    batches = []
    deleted = purge.idempotency_key_purge_expired(now=now, batch_size=4, on_batch=batches.append)
    assert deleted == 10
    assert [(b.number, b.deleted, b.total) for b in batches] == [(1, 4, 4), (2, 4, 8), (3, 2, 10)]
    assert IdempotencyKey.objects.count() == 6
    assert not IdempotencyKey.objects.filter(expires_at__lte=now).exists()
    assert purge.idempotency_key_purge_expired(now=now) == 0


def test_purge_command(org, capsys):
    now = timezone.now()
    IdempotencyKey.objects.bulk_create(
        stored_key(org, f"c{i}", now - timedelta(minutes=1)) for i in range(3)
    )
    call_command("purge_idempotency_keys", "--dry-run")
    out = capsys.readouterr().out
    assert out.startswith("Dry run: would delete 3 expired idempotency key(s)")
    assert IdempotencyKey.objects.count() == 3
    call_command("purge_idempotency_keys", "--batch-size", "2")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("batch 1: 2 deleted (2 so far,")
    assert lines[1].startswith("batch 2: 1 deleted (3 so far,")
    assert lines[2].startswith("Done: 3 expired idempotency key(s) deleted in ")
    assert IdempotencyKey.objects.count() == 0
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--batch-size"):
        call_command("purge_idempotency_keys", "--batch-size", "0")


@pytest.mark.django_db(transaction=True)
def test_two_connections_racing_on_one_key_run_it_once(monkeypatch):
    """The first request holds its transaction open inside the view; a second request
    with the same key, on another connection, is answered 409 at once (it never waits
    for the first: it finishes while the first is still held), nothing runs twice, and
    once the first has committed a third gets its stored answer."""
    from cases import apis, services

    with cross_tenant(reason="test set-up"):
        org = OrganizationFactory(plan_tier="enterprise")
        user = member_of(org)
    entered, release = threading.Event(), threading.Event()
    real_create = services.client_create

    def held_create(**kwargs):
        created = real_create(**kwargs)
        entered.set()
        assert release.wait(30)
        return created

    monkeypatch.setattr(apis.ClientViewSet, "create_service", staticmethod(held_create))
    results = {}

    def post(name):
        try:
            results[name] = bearer_client(user).post(
                "/api/v1/clients/", {"name": "Once"}, HTTP_IDEMPOTENCY_KEY="race-1"
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertions
            results[name] = exc
        finally:
            connection.close()

    first = threading.Thread(target=post, args=("first",))
    first.start()
    try:
        assert entered.wait(30), results.get("first")
        second = threading.Thread(target=post, args=("second",))
        second.start()
        second.join(20)
        assert not second.is_alive(), "the second request waited for the first"
    finally:
        release.set()
        first.join(30)
    assert results["first"].status_code == 201, results["first"]
    busy = results["second"]
    assert busy.status_code == 409
    assert busy.json()["code"] == "idempotency_key_in_progress"
    assert busy["Retry-After"] == "1"
    monkeypatch.setattr(apis.ClientViewSet, "create_service", staticmethod(real_create))
    third = bearer_client(user).post(
        "/api/v1/clients/", {"name": "Once"}, HTTP_IDEMPOTENCY_KEY="race-1"
    )
    assert (third.status_code, third["Idempotent-Replayed"]) == (201, "true")
    assert third.json() == results["first"].json()
    with cross_tenant(reason="test assertions"):
        assert Client.objects.filter(organization=org).count() == 1
        assert BillingEvent.objects.filter(organization=org, event_name="api.request").count() == 1
        assert IdempotencyKey.objects.filter(organization=org).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_retry_after_a_rolled_back_first_try_runs(monkeypatch):
    """The first try's transaction rolls back (a 5xx): its lock is gone with it and no
    row was stored, so the retry runs and is stored."""
    from cases import apis, services

    with cross_tenant(reason="test set-up"):
        org = OrganizationFactory(plan_tier="enterprise")
        user = member_of(org)
    real_create = services.client_create

    def failing_create(**kwargs):
        real_create(**kwargs)
        raise RuntimeError("crash after the write")

    monkeypatch.setattr(apis.ClientViewSet, "create_service", staticmethod(failing_create))
    client = bearer_client(user)
    client.raise_request_exception = False
    crashed = client.post("/api/v1/clients/", {"name": "Retry"}, HTTP_IDEMPOTENCY_KEY="rb-1")
    assert crashed.status_code == 500
    monkeypatch.setattr(apis.ClientViewSet, "create_service", staticmethod(real_create))
    retried = client.post("/api/v1/clients/", {"name": "Retry"}, HTTP_IDEMPOTENCY_KEY="rb-1")
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried
    with cross_tenant(reason="test assertions"):
        assert list(Client.objects.filter(organization=org).values_list("name", flat=True)) == [
            "Retry"
        ]
        assert IdempotencyKey.objects.filter(organization=org).count() == 1


def test_the_openapi_schema_documents_the_header_and_its_answers(client):
    schema = client.get("/api/schema/?format=json").json()
    create = schema["paths"]["/api/v1/cases/"]["post"]
    [parameter] = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert (parameter["in"], parameter["required"]) == ("header", False)
    assert parameter["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]
    assert "Retry-After" in create["responses"]["409"]["headers"]
    for status, code in (("409", "idempotency_key_in_progress"), ("422", "idempotency_key_reused")):
        content = create["responses"][status]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/IdempotencyError"}
        assert content["example"]["code"] == code
    for method in ("put", "patch", "delete"):
        operation = schema["paths"]["/api/v1/cases/{id}/"][method]
        assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    listing = schema["paths"]["/api/v1/cases/"]["get"]
    assert not any(p["name"] == "Idempotency-Key" for p in listing.get("parameters", []))
    token = schema["paths"]["/api/v1/auth/token/"]["post"]  # no organization: ignored
    assert not any(p["name"] == "Idempotency-Key" for p in token.get("parameters", []))
    error = schema["components"]["schemas"]["IdempotencyError"]
    assert set(error["properties"]["code"]["enum"]) == {
        "idempotency_key_invalid",
        "idempotency_key_in_progress",
        "idempotency_key_reused",
    }


@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_of_a_finished_key_are_all_answered():
    """A replay also takes the key's lock (held until its transaction ends); another
    replay of the same finished key at that moment is still a replay, never a 409. The
    holder here is a claim on a second connection, held open in its transaction."""
    from django.db import transaction

    with cross_tenant(reason="test set-up"):
        org = OrganizationFactory(plan_tier="enterprise")
        user = member_of(org)
    client = bearer_client(user)
    first = client.post("/api/v1/clients/", {"name": "Once"}, HTTP_IDEMPOTENCY_KEY="rep-1")
    assert first.status_code == 201
    with cross_tenant(reason="test: the stored fingerprint"):
        fingerprint = IdempotencyKey.objects.get(organization=org, key="rep-1").fingerprint
    held, release, claims = threading.Event(), threading.Event(), {}

    def hold_a_replay():
        try:
            with tenant_context(org), transaction.atomic():
                claims["holder"] = keys.idempotency_key_claim(
                    organization=org, key="rep-1", fingerprint=fingerprint
                )
                held.set()
                assert release.wait(30)
        finally:
            held.set()
            connection.close()

    holder = threading.Thread(target=hold_a_replay)
    holder.start()
    try:
        assert held.wait(30)
        with tenant_context(org):
            claims["other"] = keys.idempotency_key_claim(
                organization=org, key="rep-1", fingerprint=fingerprint
            )
        replay = client.post("/api/v1/clients/", {"name": "Once"}, HTTP_IDEMPOTENCY_KEY="rep-1")
    finally:
        release.set()
        holder.join(30)
    assert claims["holder"].state == claims["other"].state == "replay"
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (201, "true")
    assert replay.json() == first.json()
    with tenant_context(org):
        busy = keys.idempotency_key_claim(organization=org, key="rep-other", fingerprint="f")
    assert busy.state == "new"  # control: a key with no row is claimed
