"""Shared fixtures: two organizations (ours and an outsider), their users, API clients."""

import os

import pytest

#: Every statement of the suite is checked for organization_id (tenancy/tests/sql_capture.py).
pytest_plugins = ["tenancy.tests.sql_capture"]


def pytest_collection_modifyitems(config, items):
    """Redis tests need a real Redis: without REDIS_URL they are skipped with that reason."""
    if os.environ.get("REDIS_URL"):
        return
    skip = pytest.mark.skip(
        reason="needs a real Redis: set REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
    )
    for item in items:
        if "redis" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With GOLDLEAVES_FAIL_ON_SKIP=1 (CI), any skipped test fails the run."""
    if os.environ.get("GOLDLEAVES_FAIL_ON_SKIP") == "1":
        skipped = terminalreporter.stats.get("skipped", [])
        if skipped:
            terminalreporter.write_line(
                f"FAIL: {len(skipped)} test(s) skipped; CI allows none.", red=True
            )


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("GOLDLEAVES_FAIL_ON_SKIP") == "1":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
            session.exitstatus = 1


@pytest.fixture(autouse=True)
def _test_body_sees_every_tenant(request):
    """Run the body of each ``db`` test (one wrapping transaction) through the explicit
    cross-tenant path, so that set-up and assertions read and write any organization's
    rows with row-level security enforced (RLS_ENABLED=true), as staff tooling does.

    Requests made by the test client are NOT affected: ``TenantMiddleware`` sets its own
    organization (clearing ``app.cross_tenant``) for the request and restores the test's
    settings afterwards, so every API call is isolated exactly as in production.
    Opt out with ``@pytest.mark.rls_raw`` (tests of the policies themselves), and
    ``transaction=True`` tests are never wrapped (they test real commits).
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = marker is not None and (
        marker.kwargs.get("transaction") or (marker.args and marker.args[0])
    )
    uses_db = marker is not None or "db" in request.fixturenames
    if (
        not uses_db
        or transactional
        or "transactional_db" in request.fixturenames
        or "live_server" in request.fixturenames
        or request.node.get_closest_marker("rls_raw")
    ):
        yield
        return
    request.getfixturevalue("db")
    from tenancy.context import cross_tenant

    with cross_tenant(reason="test set-up and assertions"):
        yield


@pytest.fixture
def org(db):
    from tenancy.tests.factories import OrganizationFactory

    return OrganizationFactory(name="Acme Law", slug="acme-law")


@pytest.fixture
def outsider_org(db):
    from tenancy.tests.factories import OrganizationFactory

    return OrganizationFactory(name="Other Firm", slug="other-firm")


@pytest.fixture
def owner(org):
    from tenancy.tests.factories import member_of

    return member_of(org, email="owner@acme.test")


@pytest.fixture
def outsider(outsider_org):
    from tenancy.tests.factories import member_of

    return member_of(outsider_org, email="owner@other.test")


def bearer_client(user, organization=None):
    """An APIClient authenticated with a real access token for ``user``."""
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import AccessToken

    from tenancy.serializers import OrganizationTokenObtainPairSerializer

    token = OrganizationTokenObtainPairSerializer.get_token(user).access_token
    if organization is not None:
        token["org"] = str(organization.pk)
    assert isinstance(token, AccessToken)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def api(owner):
    """API client of ``owner`` in ``org``."""
    return bearer_client(owner)


@pytest.fixture
def outsider_api(outsider):
    """API client of a user of another organization."""
    return bearer_client(outsider)


@pytest.fixture
def anon_api():
    from rest_framework.test import APIClient

    return APIClient()


def wait_for_blockers(pids: dict, results: dict, *, waiter="second", timeout=20.0) -> list:
    """Poll ``pg_blocking_pids`` of the backend ``pids[waiter]`` (PostgreSQL manual, 9.26
    "System Information Functions") until it is blocked by another backend or has
    finished (``waiter in results``), for at most ``timeout`` seconds. Returns the
    blocking backends' pids: ``[]`` means it never waited. For tests that prove a
    second connection really queues behind a first one."""
    import time

    from django.db import connection

    blockers: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and waiter not in results:
        if waiter in pids:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_blocking_pids(%s)", [pids[waiter]])
                blockers = cursor.fetchone()[0]
            if blockers:
                break
        time.sleep(0.02)
    return blockers


def race_second_behind_first(first, second, *, what="the second", timeout=20.0) -> dict:
    """Prove that PostgreSQL makes ``second`` wait for ``first``, then let both finish.

    ``first()`` runs in a thread on its own connection inside ``transaction.atomic()``,
    which is held open after it returns; then ``second()`` runs in another thread on its
    own connection. Asserts that the second backend was blocked by the first
    (``wait_for_blockers``), releases the first transaction (it commits) and joins both.
    Returns ``{"first": result, "second": result}``, an exception raised by either in
    place of its result. Needs ``transaction=True`` tests (real commits).
    """
    import threading

    from django.db import connection, transaction

    held, release = threading.Event(), threading.Event()
    pids: dict = {}
    results: dict = {}

    def run_first() -> None:
        try:
            with transaction.atomic():
                pids["first"] = connection.connection.info.backend_pid
                results["first"] = first()
                held.set()
                assert release.wait(timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
            results["first"] = exc
        finally:
            held.set()
            connection.close()

    def run_second() -> None:
        try:
            connection.ensure_connection()
            pids["second"] = connection.connection.info.backend_pid
            results["second"] = second()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
            results["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    threads[0].start()
    assert held.wait(timeout) and not isinstance(results.get("first"), Exception), results.get(
        "first"
    )
    threads[1].start()
    try:
        blockers = wait_for_blockers(pids, results, timeout=timeout)
        assert blockers == [pids["first"]], f"{what} never waited on the first"
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout + 10)
    return results
