"""``make run``'s web server under load: the ``web:`` line of ``Procfile.dev`` (gunicorn,
WEB_WORKERS=2 x WEB_THREADS=16, persistent connections) answers 2,000 requests from 32
client threads with no error, and meters each one exactly once (2,000 ``api.request``
billing events, one per server request id).

Against the test database (the server is another process, so the organization and its
token are committed, and removed at the end), not the embedded one: ``make run`` on the
embedded database is ``test_make_run.py``; the README gives the figures measured on it.
Kept light for a small machine: one cheap billable endpoint, no sleeps beyond start-up.
"""

import os
import re
import signal
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
from tenancy.context import cross_tenant, tenant_context
from tenancy.tests.dburl import subprocess_database_env

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REQUESTS = 2000
CLIENT_THREADS = 32

pytestmark = [pytest.mark.live]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_web_command() -> str:
    """The command of ``Procfile.dev``'s ``web:`` line, as honcho runs it."""
    text = (ROOT / "Procfile.dev").read_text()
    match = re.search(r"^web:\s*(.+)$", text, re.M)
    assert match, "Procfile.dev has no web: line"
    return match.group(1)


@pytest.fixture(scope="module")
def tenant(django_db_setup, django_db_blocker):
    """One organization (unlimited plan, so no request is rate limited) with an owner and
    the owner's access token, COMMITTED; removed at the end."""
    from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

    from tenancy.models import Organization, User
    from tenancy.testing import access_token
    from tenancy.tests.factories import OrganizationFactory, member_of

    with django_db_blocker.unblock():
        org = OrganizationFactory(slug=f"load-{uuid.uuid4().hex[:6]}", plan_tier="enterprise")
        user = member_of(org, email=f"load-{uuid.uuid4().hex[:6]}@load.test")
        yield {"org": org, "token": str(access_token(user))}
        with cross_tenant(reason="test clean-up"):
            BillingEvent.objects.filter(organization_id=org.pk).delete()
            OutstandingToken.objects.filter(user__email__endswith="@load.test").delete()
            User.objects.filter(email__endswith="@load.test").delete()
            Organization.objects.filter(pk=org.pk).delete()
        connection.close()


@pytest.fixture(scope="module")
def web_server(tenant):
    """``Procfile.dev``'s web line on a free port, with make run's defaults."""
    port = _free_port()
    env = {
        **os.environ,
        **subprocess_database_env(),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GOLDLEAVES_ADDR": f"127.0.0.1:{port}",
        "GOLDLEAVES_ENV_FILE": str(ROOT / "no-such.env"),  # make run's defaults, no .env
        "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "false",
        "WEB_WORKERS": "2",
        "WEB_THREADS": "16",
        "WEB_LOG_LEVEL": "warning",
        "LOG_LEVEL": "WARNING",
        "CONN_MAX_AGE": "60",
        "DATABASE_POOL_SIZE": "0",
        "BILLING_METERING_ENABLED": "true",
    }
    proc = subprocess.Popen(
        ["sh", "-c", "exec " + procfile_web_command()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + proc.stderr.read())
            try:
                requests.get(base + "/health/", timeout=5)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_2000_requests_from_32_threads_all_answered_and_each_metered_once(web_server, tenant):
    url = web_server + "/api/v1/organizations/current/"
    headers = {"Authorization": f"Bearer {tenant['token']}"}
    per_thread = REQUESTS // CLIENT_THREADS
    extra = REQUESTS - per_thread * CLIENT_THREADS

    def client(index: int) -> list[tuple[int, str]]:
        results = []
        with requests.Session() as session:
            for _ in range(per_thread + (1 if index < extra else 0)):
                try:
                    r = session.get(url, headers=headers, timeout=60)
                    results.append((r.status_code, r.headers.get("X-Server-Request-ID", "")))
                except requests.RequestException as exc:
                    results.append((0, repr(exc)))
        return results

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        answers = [a for chunk in pool.map(client, range(CLIENT_THREADS)) for a in chunk]
    assert len(answers) == REQUESTS
    errors = [a for a in answers if a[0] != 200]
    assert errors == [], f"{len(errors)} errors, e.g. {errors[:5]}"
    request_ids = {rid for _, rid in answers}
    assert len(request_ids) == REQUESTS  # 2,000 distinct server requests

    org = tenant["org"]
    with tenant_context(org):
        events = BillingEvent.objects.for_organization(org).filter(event_name="api.request")
        assert events.count() == REQUESTS
        assert set(events.values_list("request_id", flat=True)) == request_ids


def test_a_chunked_body_is_refused_with_411_and_writes_nothing(web_server, tenant):
    """gunicorn passes a chunked body on without a Content-Length, and Django reads none
    of it: the API refuses it (411 ``length_required``) instead of running the view on an
    empty body (``core.errors.LengthRequiredMiddleware``)."""
    from cases.models import Client

    org = tenant["org"]
    headers = {"Authorization": f"Bearer {tenant['token']}", "Content-Type": "application/json"}
    body = iter([b'{"name": ', b'"Chunked client"}'])  # a generator: requests sends it chunked
    response = requests.post(
        web_server + "/api/v1/clients/", data=body, headers=headers, timeout=30
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 411, response.text
    assert response.json()["code"] == "length_required"
    with tenant_context(org):
        assert not Client.objects.filter(organization=org).exists()
