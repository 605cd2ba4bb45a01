"""Shared fixtures and pytest hooks: two organizations (ours and an outsider), their users,
API clients. Helpers that test modules import live in ``core.testing`` (two-connection
races) and ``tenancy.testing`` (access tokens, bearer clients)."""

import os
import shutil

import pytest

from tenancy.tests.db_setup import django_db_setup  # noqa: F401 (pytest-django's, replaced)

#: Every statement of the suite is checked for organization_id (tenancy/tests/sql_capture.py);
#: the test database is created and migrated by the owner, the tests log in as the app role
#: (tenancy/tests/db_setup.py).
pytest_plugins = ["tenancy.tests.sql_capture"]


def pytest_collection_modifyitems(config, items):
    """Redis tests need a real Redis: without REDIS_URL they are skipped with that reason.
    Browser tests need Chromium and chromedriver on PATH (``sh scripts/ci_browser.sh``);
    without them they are skipped with that reason (CI installs them and allows no skip)."""
    skips = {}
    if not os.environ.get("REDIS_URL"):
        skips["redis"] = pytest.mark.skip(
            reason="needs a real Redis: set REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
        )
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        skips["browser"] = pytest.mark.skip(
            reason="needs chromium and chromedriver: sh scripts/ci_browser.sh"
        )
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
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


@pytest.fixture
def api(owner):
    """API client of ``owner`` in ``org``."""
    from tenancy.testing import bearer_client

    return bearer_client(owner)


@pytest.fixture
def outsider_api(outsider):
    """API client of a user of another organization."""
    from tenancy.testing import bearer_client

    return bearer_client(outsider)


@pytest.fixture
def anon_api():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(autouse=True)
def _fresh_login_buckets(monkeypatch):
    """Every test starts with empty login-throttle buckets (``tenancy.login_throttle``):
    the fixtures' emails and the test client's address recur in every test, so without
    this one test's logins would count against the next. Each test gets its own Redis key
    prefix (the keys expire on their own), a fresh per-process limiter and fresh Redis
    fallback buckets."""
    import uuid

    from tenancy import login_throttle, ratelimit

    monkeypatch.setattr(login_throttle, "KEY_PREFIX", f"login-test-{uuid.uuid4().hex}")
    monkeypatch.setattr(login_throttle, "_fallback", ratelimit.LocalLimiter())
    ratelimit.reset_limiter()
    yield
