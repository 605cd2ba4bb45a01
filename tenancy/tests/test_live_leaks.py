"""The connection-level organization never outlives its request -- against a LIVE server.

A gunicorn process (gthread worker, 4 threads) serves the real middleware stack plus
the test-only views of ``tenancy.tests.leak_site`` from the committed test database,
so no wrapping test transaction can hide a leak. Three deployments:

* persistent connections (``CONN_MAX_AGE=60``);
* Django's psycopg pool with ``min_size=max_size=1`` and the ``reset`` callback (every
  thread shares ONE backend, the harshest case);
* a real PgBouncer in transaction mode in front of PostgreSQL (``tenancy/tests/pgbouncer.py``
  starts and stops its own process and config in a temp dir).

Each alternates two organizations' requests (1,200, 8 client threads): half on the real,
billable ``GET /api/v1/cases/`` (each with its own ``X-Request-ID``), half on the test view
``/leak/whoami/`` (an UNFILTERED query, so only row-level security keeps the other firm
out). Every response must show only its own organization, and the ``api.request`` events
the real ``UsageMiddleware`` wrote must be exactly one per API request sent, in the
sender's organization (a metering failure the middleware swallows fails the test). Then a
view exception, a middleware exception, a savepoint rollback and a staff admin request
(the cross-tenant path) are each followed by a request on the same backend
(``pg_backend_pid()``) that must read ``app.current_org`` and ``app.cross_tenant`` as
empty and ``app.rls_enabled`` as the database default.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection

from billing.models import BillingEvent
from tenancy.context import cross_tenant
from tenancy.tests.dburl import socket_or_host, subprocess_database_url
from tenancy.tests.pgbouncer import PgBouncer, pgbouncer_binary

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 1200
CLIENT_THREADS = 8

pytestmark = pytest.mark.live


def _free_port(start=8100, end=8199) -> int:
    for port in range(start, end):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8100-8199")


class Gunicorn:
    def __init__(self, env: dict):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tenancy.tests.leak_settings",
            "SECRET_KEY": settings.SECRET_KEY,
            "RLS_ENABLED": "true",
            "BILLING_METERING_ENABLED": "true",
            "LOG_LEVEL": "ERROR",
            **env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "goldleaves.wsgi",
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave an orphan server behind
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.proc.stderr.read())
            try:
                requests.get(self.base + "/health/", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("gunicorn did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _staff_session() -> dict:
    """A committed staff superuser and a logged-in session for it: the session cookie."""
    from django.conf import settings as dj_settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from tenancy.models import User

    staff = User.objects.create_superuser(
        email=f"staff-{uuid.uuid4().hex[:6]}@leak.test", password=uuid.uuid4().hex
    )
    session = SessionStore()
    session[SESSION_KEY] = str(staff.pk)
    session[BACKEND_SESSION_KEY] = dj_settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = staff.get_session_auth_hash()
    session.create()
    return {dj_settings.SESSION_COOKIE_NAME: session.session_key}


@pytest.fixture(scope="module")
def tenants(django_db_setup, django_db_blocker):
    """Two organizations with a case each and an owner each, COMMITTED (the server is
    another process); removed again at the end."""
    from cases.tests.factories import CaseFactory
    from tenancy.models import Organization
    from tenancy.testing import access_token
    from tenancy.tests.factories import OrganizationFactory, member_of

    with django_db_blocker.unblock():
        result = {}
        for key in ("a", "b"):
            # enterprise: unlimited rate, so 600 requests per organization are all served
            org = OrganizationFactory(
                slug=f"leak-{key}-{uuid.uuid4().hex[:6]}", plan_tier="enterprise"
            )
            user = member_of(org, email=f"leak-{key}-{uuid.uuid4().hex[:6]}@leak.test")
            case = CaseFactory(organization=org)
            token = access_token(user)  # the token endpoint's recipe, as bearer_client
            result[key] = {"org": org, "user": user, "token": str(token), "case": case}
        result["staff_session"] = _staff_session()
        yield result
        with cross_tenant(reason="test clean-up"):
            ids = [result[k]["org"].pk for k in "ab"]
            BillingEvent.objects.filter(organization_id__in=ids).delete()
            from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

            from cases.models import Case, Client
            from tenancy.models import User

            Case.objects.filter(organization_id__in=ids).delete()
            Client.objects.filter(organization_id__in=ids).delete()
            # the refresh tokens access_token() recorded (they would outlive their users)
            OutstandingToken.objects.filter(user__email__endswith="@leak.test").delete()
            User.objects.filter(email__endswith="@leak.test").delete()
            Organization.objects.filter(pk__in=ids).delete()
        connection.close()


def _alternate(base: str, tenants: dict) -> None:
    """REQUESTS requests alternating organizations over CLIENT_THREADS threads, half on the
    billable ``/api/v1/cases/``, half on ``/leak/whoami/``; checks every response, then
    that the real ``UsageMiddleware`` metered each API request once, in its organization."""
    sessions: dict[int, requests.Session] = {}

    def one(i: int):
        import threading

        key = "ab"[i % 2]
        t = tenants[key]
        org = str(t["org"].pk)
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        auth = {"Authorization": f"Bearer {t['token']}"}
        if i % 4 < 2:
            request_id = f"leak-{key}-{i}-{uuid.uuid4().hex[:12]}"
            r = session.get(
                base + "/api/v1/cases/", headers={**auth, "X-Request-ID": request_id}, timeout=30
            )
            assert r.status_code == 200, r.text
            assert r.headers["X-Request-ID"] == request_id
            ids = [row["id"] for row in r.json()["results"]]
            assert ids == [str(t["case"].pk)], f"request {i} ({key}) saw {ids}"
            return key, r.headers["X-Server-Request-ID"]  # the event's request_id
        r = session.get(base + "/leak/whoami/", headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["organization"] == org
        assert body["setting"] == org
        assert body["cases"] == [org], f"request {i} ({key}) saw {body['cases']}"
        return key, None

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        sent = [(k, rid) for k, rid in pool.map(one, range(REQUESTS)) if rid]
    assert len(sent) == REQUESTS // 2
    all_ids = [rid for _, rid in sent]
    with cross_tenant(reason="test: where did the metered events land"):
        for key in "ab":
            expected = sorted(rid for k, rid in sent if k == key)
            landed = sorted(
                BillingEvent.objects.filter(
                    organization=tenants[key]["org"],
                    event_name="api.request",
                    request_id__in=all_ids,
                ).values_list("request_id", flat=True)
            )
            assert len(expected) == REQUESTS // 4
            assert landed == expected, (
                f"{key}: {len(expected)} API requests sent, {len(landed)} api.request events "
                f"in its organization; missing {sorted(set(expected) - set(landed))[:5]}, "
                f"foreign {sorted(set(landed) - set(expected))[:5]}"
            )


def _probe_same_backend(base: str, pid: int) -> dict:
    """Probe (no tenant context) until a request lands on backend ``pid``; every probe on
    the way must already read ``app.current_org`` and ``app.cross_tenant`` as empty and
    ``app.rls_enabled`` as the database default (nothing a request set survives it)."""
    session = requests.Session()
    for _ in range(200):
        body = session.get(base + "/leak/probe/", timeout=10).json()
        assert body["setting"] in ("", None), body
        assert body["cross_tenant"] in ("", None), body
        assert body["rls_enabled"] == body["rls_enabled_default"], body
        if body["rls_enabled_default"] != "off":
            assert body["cases"] == 0, body  # no context: fail closed
        if body["pid"] == pid:
            return body
    raise AssertionError(f"no probe reached backend {pid}")


def _after_failures(base: str, tenants: dict) -> None:
    a, b = tenants["a"], tenants["b"]
    auth = {"Authorization": f"Bearer {a['token']}"}
    session = requests.Session()

    r = session.get(base + "/leak/boom/", headers=auth, timeout=10)
    assert r.status_code == 500
    _probe_same_backend(base, int(r.headers["X-Backend-Pid"]))

    r = session.get(
        base + "/leak/whoami/", headers={**auth, "X-Leak-Middleware-Boom": "1"}, timeout=10
    )
    assert r.status_code == 500
    _probe_same_backend(base, int(r.headers["X-Backend-Pid"]))

    r = session.get(base + f"/leak/savepoint/{b['org'].pk}/", headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["setting"] == str(a["org"].pk)  # the rollback restored A, not B
    _probe_same_backend(base, r.json()["pid"])

    # The cross-tenant path: staff in the admin see every organization's cases...
    admin = requests.Session()
    admin.cookies.update(tenants["staff_session"])
    r = admin.get(base + "/admin/cases/case/", timeout=10, allow_redirects=False)
    assert r.status_code == 200, r.status_code
    for key in "ab":
        assert tenants[key]["case"].reference_number in r.text
    # ... and the next request on that backend is back to no organization, no bypass.
    _probe_same_backend(base, int(r.headers["X-Backend-Pid"]))


@pytest.mark.django_db
def test_persistent_connections_never_leak_the_organization(tenants):
    server = Gunicorn({"DATABASE_URL": subprocess_database_url(), "CONN_MAX_AGE": "60"})
    try:
        _alternate(server.base, tenants)
        _after_failures(server.base, tenants)
    finally:
        server.stop()


@pytest.mark.django_db
def test_psycopg_pool_of_one_connection_never_leaks_the_organization(tenants):
    server = Gunicorn({"DATABASE_URL": subprocess_database_url(), "DATABASE_POOL_SIZE": "1"})
    try:
        _alternate(server.base, tenants)
        _after_failures(server.base, tenants)
        pids = {
            requests.get(server.base + "/leak/probe/", timeout=10).json()["pid"] for _ in range(20)
        }
        assert len(pids) == 1, "min_size=max_size=1: one backend serves every thread"
    finally:
        server.stop()


@pytest.mark.django_db
def test_pgbouncer_transaction_mode_never_leaks_the_organization(tenants, tmp_path):
    if pgbouncer_binary() is None:
        # CI installs it first (.ci/run runs scripts/ci_pgbouncer.sh) and fails on any skip.
        pytest.skip("needs pgbouncer: run scripts/ci_pgbouncer.sh (see DEPLOY.md)")
    s = connection.settings_dict
    app_role = settings.DATABASE_APP_ROLE or s["USER"]
    db_host, db_port = socket_or_host()
    with PgBouncer(
        tmp_path,
        db_host=db_host,
        db_port=db_port,
        database=s["NAME"],
        user=app_role,
        listen_port=_free_port(6433, 6499),
    ) as bouncer:
        server = Gunicorn(
            {
                # log in as the app role itself: session state like SET ROLE would not
                # follow a client from one server connection to the next
                "DATABASE_URL": subprocess_database_url(
                    host="127.0.0.1", port=bouncer.port, user=app_role
                ),
                "DATABASE_APP_ROLE": "",
                "CONN_MAX_AGE": "60",
                "DISABLE_SERVER_SIDE_CURSORS": "true",
            }
        )
        try:
            _alternate(server.base, tenants)
            _after_failures(server.base, tenants)
            assert bouncer.served_transactions() > REQUESTS
        finally:
            server.stop()
