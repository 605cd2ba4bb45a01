"""Background jobs (procrastinate, the PostgreSQL task queue): the rules every
job of the project follows, the worker's database connection, and the queue's health.

* **Same transaction.** The web process defers jobs through procrastinate's
  ``DjangoConnector``, i.e. on Django's own connection: a job deferred inside
  ``transaction.atomic`` is an ``INSERT`` into ``procrastinate_jobs`` in that transaction,
  so it commits or rolls back with the rows it belongs to (procrastinate docs, "Use
  Procrastinate in a Django application"). No sweeper looks for lost jobs, and no job
  ever points at a row that was rolled back.
* **Ids, never instances.** A job's arguments are stored as JSON
  (``procrastinate_jobs.args``): ids as strings, so a job always reads the rows as they
  are when it runs.
* **Tenant context.** Every job that touches tenant data takes ``organization_id`` and is
  wrapped by ``tenant_job``; each transaction it opens runs in
  ``tenancy.context.tenant_context`` of that organization, so row-level security applies
  in workers exactly as in requests.
* **Safe to run twice.** A worker killed after a job's commit but before it recorded the
  job as done runs the job again (stalled-job retry), so every job is idempotent: row
  locks, conditional updates and unique constraints, never "it ran once".

procrastinate's tables (``procrastinate_jobs``, ``_events``, ``_workers``,
``_periodic_defers``) are not tenant tables: no ``organization_id``, no row-level
security. ``manage.py migrate`` grants the app role DML on them with every other table
(``tenancy.rls.roles.ensure_app_role``), and ``job_table_problems`` (run by
``check_isolation``) fails when it may not use them.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from django.utils import timezone
from procrastinate import RetryStrategy
from procrastinate.contrib.django import django_connector, utils
from procrastinate.psycopg_connector import PsycopgConnector

from tenancy.rls.roles import app_role

logger = logging.getLogger("tenancy.jobs")

#: Database errors worth another attempt: a lost or refused connection, a statement
#: timeout, a serialization failure or deadlock (Django's ``OperationalError`` and
#: ``InterfaceError``; PostgreSQL manual, Appendix A, classes 08, 40, 53, 57).
TRANSIENT_DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)

#: The job tables the app role must be able to read and write (``job_table_problems``).
JOB_TABLES = (
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_workers",
    "procrastinate_periodic_defers",
)


def transient_retry(*extra: type[Exception], max_attempts: int | None = None) -> RetryStrategy:
    """The retry strategy of a job that may hit a transient error: retried only on
    ``TRANSIENT_DATABASE_ERRORS`` and ``extra``, with exponential backoff (2, 4, 8, ...
    seconds: ``exponential_wait=2`` waits ``2 ** (attempts + 1)`` s; procrastinate docs,
    "Define a retry strategy on a task"), at most ``max_attempts`` retries (default
    ``settings.JOB_MAX_RETRIES``, 11: the last retry comes about 68 minutes after the first
    failure). Any other exception fails the job at once."""
    return RetryStrategy(
        max_attempts=settings.JOB_MAX_RETRIES if max_attempts is None else max_attempts,
        exponential_wait=2,
        retry_exceptions={*TRANSIENT_DATABASE_ERRORS, *extra},
    )


def tenant_job(func):
    """Decorator for a job function ``func(organization, **kwargs)`` that touches tenant
    data; the job itself is called ``job(organization_id: str, **kwargs)``.

    Loads the ``Organization`` (organizations are the tenants, not tenant rows: no
    row-level security applies to them) and passes it to ``func``, which names it
    explicitly: each transaction it opens is ``tenant_context(organization)``, and the
    services it calls take ``organization=``. No transaction is opened here: a job such as
    the usage report commits several times. An organization deleted since the job was
    deferred (its tenant rows are gone with it) is logged and the job does nothing
    (returns None).
    """
    from tenancy.models import Organization

    @functools.wraps(func)
    def job(organization_id: str, **kwargs):
        organization = Organization.objects.filter(pk=organization_id).first()
        if organization is None:
            logger.warning(
                "%s: organization %s no longer exists; nothing to do",
                func.__qualname__,
                organization_id,
            )
            return None
        return func(organization, **kwargs)

    return job


class AppRoleDjangoConnector(django_connector.DjangoConnector):
    """procrastinate's ``DjangoConnector`` (defers on Django's connection), whose worker
    connector (``manage.py procrastinate worker`` replaces the app's connector with it)
    logs in as the app role like every request connection."""

    def get_worker_connector(self) -> PsycopgConnector:
        """A ``PsycopgConnector`` (psycopg 3 async pool) on ``DATABASES[alias]``, with the
        libpq startup option ``-c role=<DATABASE_APP_ROLE>`` when an app role is set: the
        session starts as that role, as ``SET ROLE`` would (PostgreSQL manual, 20.1.4
        "Parameter Interaction via the Shell" and ``SET ROLE``). In production
        ``DATABASE_URL`` already logs in as the app role and this changes nothing."""
        params = utils.connector_params(self.alias)
        role = app_role()
        if role:
            quoted = role.replace("\\", "\\\\").replace(" ", "\\ ")
            params["options"] = f"{params.get('options', '')} -c role={quoted}".strip()
        return PsycopgConnector(kwargs=params)


def on_app_ready(app) -> None:
    """``PROCRASTINATE_ON_APP_READY``: put ``AppRoleDjangoConnector`` in place of the
    ``DjangoConnector`` procrastinate configured (the same alias), on the app and its job
    manager, as ``App.replace_connector`` does for a block."""
    connector = AppRoleDjangoConnector(alias=app.connector.alias)
    app.connector = connector
    app.job_manager.connector = connector


def job_table_problems(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Lines naming each job table (``JOB_TABLES``) that the role this connection runs as
    (the app role) may not ``SELECT``, ``INSERT``, ``UPDATE`` and ``DELETE``, or that is
    missing (``manage.py migrate procrastinate`` not run). Empty: the app role can defer,
    fetch and finish jobs. PostgreSQL manual, 9.26 "System Information Functions",
    ``has_table_privilege``."""
    problems = []
    with connections[using].cursor() as cursor:
        for table in JOB_TABLES:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
            if not cursor.fetchone()[0]:
                problems.append(f"job table {table}: missing (run manage.py migrate)")
                continue
            cursor.execute(
                "SELECT has_table_privilege(current_user, %s, 'SELECT, INSERT, UPDATE, DELETE')",
                [table],
            )
            if not cursor.fetchone()[0]:
                problems.append(
                    f"job table {table}: the role this connection runs as may not "
                    "SELECT/INSERT/UPDATE/DELETE it (run manage.py migrate, which grants it)"
                )
    return problems


_JOB_HEALTH_SQL = """
SELECT count(*) FILTER (WHERE j.status = 'failed'),
       count(*) FILTER (WHERE j.status = 'todo' AND coalesce(j.scheduled_at, %(now)s) <= %(now)s),
       min(coalesce(j.scheduled_at, d.at))
           FILTER (WHERE j.status = 'todo' AND coalesce(j.scheduled_at, %(now)s) <= %(now)s)
FROM procrastinate_jobs j
LEFT JOIN LATERAL (
    SELECT min(e.at) AS at FROM procrastinate_events e
    WHERE e.job_id = j.id AND e.type = 'deferred'
) d ON j.status = 'todo'
WHERE %(organization_id)s::text IS NULL OR j.args->>'organization_id' = %(organization_id)s
"""


def job_health(*, organization=None, now: datetime | None = None) -> dict:
    """The job queue at a glance, in one query on procrastinate's tables:

    * ``failed_jobs`` (int): jobs whose last attempt failed and that will not be retried
      (retries exhausted, or a permanent error);
    * ``waiting_jobs`` (int): ``todo`` jobs that are due now (not scheduled later);
    * ``oldest_waiting_job_age_seconds`` (float or None): how long the oldest of those has
      been due, in seconds, from its ``scheduled_at`` (a retry or a scheduled job) or else
      from its deferral. A growing age means no worker is taking jobs.

    Args:
        organization: an ``Organization``: only its jobs (those whose ``args`` carry its
            ``organization_id``); None: every job (staff).
        now: the reference time (UTC; default: now).
    """
    now = now or timezone.now()
    params = {"now": now, "organization_id": str(organization.pk) if organization else None}
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(_JOB_HEALTH_SQL, params)
        failed, waiting, oldest = cursor.fetchone()
    return {
        "failed_jobs": failed,
        "waiting_jobs": waiting,
        "oldest_waiting_job_age_seconds": (
            round(max((now - oldest).total_seconds(), 0.0), 3) if oldest is not None else None
        ),
    }
