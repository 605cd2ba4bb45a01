"""pytest plugin: every SQL statement the test suite sends stays inside one organization.

Installed from the root ``conftest.py``. Each Django database connection gets an execute
wrapper as it opens (``connection_created``: every thread's, every reconnect), which
checks each statement with ``tenancy.tests.sql_scope.unscoped_tables``: a statement that
reads or writes a tenant table without an ``organization_id`` condition for it would run
on every Citus shard (or be refused: a join that "requires repartitioning"). At the end
of the session the run FAILS, listing each such statement with the test that sent it and
the code that built it, unless the statement belongs to a path that ``ALLOWED`` names.

``ALLOWED`` is the explicit list of the paths that are cross-organization on purpose,
each with its reason; everything else must carry the organization. A new cross-tenant
path is added there by name, in review, never by loosening the check.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field

import pytest

#: Frames of these modules are the plumbing between the code and the database, not the
#: code that built the statement.
_PLUMBING = ("django.", "rest_framework.", "psycopg", "tenancy.tests.sql_", "_pytest", "pluggy")


@dataclass(frozen=True)
class Situation:
    """A statement without ``organization_id`` and where it was sent from: its SQL and the
    tenant tables at fault, the innermost ``cross_tenant`` reason, whether an organization
    was in context, the test's ``rls_raw`` marker, whether migrations were running, and
    ``origin``, the innermost frame (``module.function``) outside the database plumbing."""

    sql: str
    tables: frozenset[str]
    test: str
    reason: str | None
    rls_raw: bool
    migrating: bool
    origin: str

    @property
    def from_test_code(self) -> bool:
        """The statement was built by test code itself (not by the code under test)."""
        module = self.origin.rsplit(".", 1)[0]
        return ".tests." in f".{module}." or module in ("conftest",)


@dataclass(frozen=True)
class Allowed:
    """A cross-organization path on purpose: its name, why, and how to recognise it."""

    name: str
    why: str
    applies: object  # Callable[[Situation], bool]


ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        "migrations",
        "schema and data migrations run as the owner over every organization's rows",
        lambda s: s.migrating or ".migrations." in f".{s.origin}",
    ),
    Allowed(
        "staff admin",
        "the Django admin is staff's cross-tenant tool (AdminCrossTenantMiddleware)",
        lambda s: s.reason == "django admin",
    ),
    Allowed(
        "staff billing pipeline health",
        "counts the Stripe outbox of every organization for staff",
        lambda s: s.reason == "staff billing pipeline health",
    ),
    Allowed(
        "process_documents: pending documents of every organization",
        "finds the pending documents of all organizations, then processes each in its "
        "own tenant context",
        lambda s: s.reason == "process_documents: pending documents of every organization",
    ),
    Allowed(
        "hourly usage reports: organizations with pending usage",
        "the hourly schedule finds the organizations with pending usage (once an hour, "
        "one query), then queues each one's report in its own tenant context",
        lambda s: s.reason == "hourly usage reports: organizations with pending usage",
    ),
    Allowed(
        "backfill_organizations",
        "one batch creates organizations and memberships for many users at once",
        lambda s: (s.reason or "").startswith("backfill_organizations"),
    ),
    Allowed(
        "purge of expired idempotency keys",
        "housekeeping deletes the expired Idempotency-Key answers of every organization, "
        "in batches (billing.idempotency.purge)",
        lambda s: s.reason in ("count expired idempotency keys", "purge expired idempotency keys"),
    ),
    Allowed(
        "a user's memberships in every organization",
        "GET /organizations/ and the token endpoint read one user's memberships, which "
        "live in each of their organizations' shards: a multi-shard query by user_id, by "
        "design (tenancy.selectors.memberships_for_user, the token's default organization)",
        lambda s: (
            s.tables == {"tenancy_membership"} and '"tenancy_membership"."user_id" = ' in s.sql
        ),
    ),
    Allowed(
        "test set-up under cross_tenant",
        "test code creates and inspects rows of several organizations through "
        "cross_tenant(reason='test ...')",
        lambda s: (s.reason or "").startswith("test"),
    ),
    Allowed(
        "RLS and catalog tests",
        "tests marked rls_raw send unscoped SQL from the test code on purpose, to prove "
        "that PostgreSQL's policies (not the ORM filter) keep organizations apart",
        lambda s: s.rls_raw and s.from_test_code,
    ),
    Allowed(
        "RLS test of the API without the ORM's tenant filter",
        "removes the tenant filter of the case list on purpose, to prove that row-level "
        "security alone keeps the other organization's cases out",
        lambda s: s.test.endswith(
            "test_rls.py::test_api_with_the_tenant_filter_removed_still_sees_only_its_rows"
        ),
    ),
)


@dataclass
class Offence:
    test: str
    tables: tuple[str, ...]
    sql: str
    origin: str


@dataclass
class Capture:
    """What the wrapper saw: statements checked, allowed per path, offences."""

    checked: int = 0
    allowed: Counter = field(default_factory=Counter)
    offences: list[Offence] = field(default_factory=list)
    test: str = "<session set-up>"
    rls_raw: bool = False
    migrating: bool = False
    #: while a test records on purpose (``recording()``), offences go there instead
    recorders: list[list] = field(default_factory=list)
    _tenant_tables: frozenset[str] | None = None

    def tenant_tables(self) -> frozenset[str]:
        if self._tenant_tables is None:
            from django.apps import apps

            from tenancy.rls import policies

            entries = policies.tenant_tables(apps.get_models())
            self._tenant_tables = frozenset(e.table for e in entries if not e.through_parent)
        return self._tenant_tables

    def situation(self, sql: str, tables: frozenset[str]) -> Situation:
        from tenancy.context import cross_tenant_reason

        origin = "<unknown>"
        frame = sys._getframe(2)
        while frame is not None:
            name = f"{frame.f_globals.get('__name__', '')}.{frame.f_code.co_qualname}"
            if not name.startswith(_PLUMBING):
                origin = name
                break
            frame = frame.f_back
        return Situation(
            sql=sql,
            tables=tables,
            test=self.test,
            reason=cross_tenant_reason(),
            rls_raw=self.rls_raw,
            migrating=self.migrating,
            origin=origin,
        )

    def check(self, sql: str, params) -> None:
        from tenancy.tests.sql_scope import to_postgres_sql, unscoped_tables

        self.checked += 1
        try:
            tables = unscoped_tables(to_postgres_sql(sql, params), self.tenant_tables())
        except Exception as exc:  # noqa: BLE001 - an unparsable statement is reported
            tables = frozenset({f"<not parsed: {exc}>"})
        if not tables:
            return
        situation = self.situation(sql, tables)
        if not self.recorders:
            for rule in ALLOWED:
                if rule.applies(situation):
                    self.allowed[rule.name] += 1
                    return
        offence = Offence(
            self.test, tuple(sorted(tables)), " ".join(sql.split())[:600], situation.origin
        )
        (self.recorders[-1] if self.recorders else self.offences).append(offence)


CAPTURE = Capture()


def _execute_wrapper(execute, sql, params, many, context):
    CAPTURE.check(sql, params[0] if many and params else params)
    return execute(sql, params, many, context)


def _install(sender, connection, **kwargs) -> None:
    if _execute_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(_execute_wrapper)


def _migration_started(sender, **kwargs) -> None:
    CAPTURE.migrating = True


def _migration_finished(sender, **kwargs) -> None:
    CAPTURE.migrating = False


@contextlib.contextmanager
def recording():
    """Collect the offences of the block in a list (yielded) instead of failing the
    session, and with no path allowed: for the test that proves the check catches a
    statement."""
    found: list[Offence] = []
    CAPTURE.recorders.append(found)
    try:
        yield found
    finally:
        CAPTURE.recorders.pop()


def pytest_configure(config):
    from django.db.backends.signals import connection_created
    from django.db.models.signals import post_migrate, pre_migrate

    connection_created.connect(_install, dispatch_uid="goldleaves_sql_capture")
    pre_migrate.connect(_migration_started, dispatch_uid="goldleaves_sql_capture")
    post_migrate.connect(_migration_finished, dispatch_uid="goldleaves_sql_capture")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    CAPTURE.test = item.nodeid
    CAPTURE.rls_raw = item.get_closest_marker("rls_raw") is not None
    try:
        return (yield)
    finally:
        CAPTURE.test = "<between tests>"
        CAPTURE.rls_raw = False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    allowed = ", ".join(f"{name} {n}" for name, n in sorted(CAPTURE.allowed.items()))
    terminalreporter.write_line(
        f"SQL capture: {CAPTURE.checked} statements checked; cross-organization by name: "
        f"{allowed or 'none'}; {len(CAPTURE.offences)} without organization_id."
    )
    seen = set()
    for offence in CAPTURE.offences:
        key = (offence.test, offence.sql)
        if key in seen:
            continue
        seen.add(key)
        terminalreporter.write_line(
            f"FAIL: {offence.test}: {', '.join(offence.tables)} without organization_id, "
            f"from {offence.origin}:\n    {offence.sql}",
            red=True,
        )


def pytest_sessionfinish(session, exitstatus):
    if CAPTURE.offences:
        session.exitstatus = 1
