"""Background jobs of billing (procrastinate tasks; the rules are in ``tenancy.jobs``).

* ``report_usage`` (``billing.report_usage``): one organization's usage report to Stripe
  (``billing.reporting.runs.report_usage``) for a ``MeterReport`` created with the job.
  Deferred by ``billing.reporting.queue.report_queue``: from ``POST report-usage/`` and
  from the hourly schedule below.
* ``schedule_usage_reports`` (``billing.schedule_usage_reports``): periodic, every hour at
  minute 5 (the hour that just ended is complete by then): one report job per
  organization with pending usage.

Report jobs of one organization carry its **lock** and its **queueing lock** (both
``report_lock``): procrastinate runs at most one job per lock at a time (a unique partial
index on ``doing`` jobs; the next one waits) and keeps at most one waiting job per queueing
lock (a unique partial index on ``todo`` jobs; procrastinate docs, "Ensure jobs run
sequentially and in order" and "Ensure tasks don't accumulate in the queue"), so two
reports of one organization never overlap and never queue twice.
"""

from __future__ import annotations

import logging

from django.conf import settings
from procrastinate.contrib.django import app

from tenancy.jobs import tenant_job

logger = logging.getLogger("billing.tasks")

#: The queue of billing jobs (``manage.py procrastinate worker --queues billing``).
BILLING_QUEUE = "billing"


def report_lock(organization_id) -> str:
    """The procrastinate lock and queueing lock of an organization's report jobs."""
    return f"usage-report:{organization_id}"


@app.task(name="billing.report_usage", queue=BILLING_QUEUE)
@tenant_job
def report_usage(organization, *, report_id: str) -> str:
    """Job ``report_usage(organization_id: str, report_id: str)``: run the organization's
    usage report for the ``MeterReport`` ``report_id`` (created ``queued`` with the job)
    and return its final status (shown in the job's log line and the admin).

    Not retried by procrastinate: a run that fails records it on its report (``failed``,
    ``detail``) and the job fails; nothing is lost, because the work lives in the database
    (pending events, outbox rows committed before any send) and the next run, at the
    latest the next hourly one, reports it. Stripe calls are retried inside the run
    (``billing.reporting.send``). A retry of a *stalled* job (its worker was killed)
    resumes its report: the run claims a ``queued`` report, or this job's own ``running``
    one (``resume``), and resends the same outbox identifiers, which Stripe deduplicates.
    """
    from billing.models import MeterReport
    from billing.reporting.runs import report_usage as run_report
    from tenancy.context import tenant_context

    with tenant_context(organization):
        report = MeterReport.objects.for_organization(organization).filter(pk=report_id).first()
    if report is None:
        logger.warning("usage report %s no longer exists; nothing to do", report_id)
        return "deleted"
    return run_report(organization=organization, report=report, resume=True).report.status


def defer_report(*, organization, report_id) -> int:
    """Defer ``report_usage`` for ``report_id`` with the organization's lock and queueing
    lock (``report_lock``), on the caller's connection and in its transaction.

    Raises:
        procrastinate.exceptions.AlreadyEnqueued: a report job of the organization is
            already waiting (its queueing lock); the INSERT failed, so the caller runs
            this in a savepoint (``billing.reporting.queue.report_queue`` does).
    """
    lock = report_lock(organization.pk)
    return report_usage.configure(lock=lock, queueing_lock=lock).defer(
        organization_id=str(organization.pk), report_id=str(report_id)
    )


@app.periodic(cron="5 * * * *", periodic_id="hourly")
@app.task(
    name="billing.schedule_usage_reports",
    queue=BILLING_QUEUE,
    queueing_lock="billing.schedule_usage_reports",
)
def schedule_usage_reports(timestamp: int) -> int:
    """Periodic job (every hour at minute 5, UTC; ``timestamp``: the Unix time it was
    scheduled for): one report job per organization with pending usage
    (``billing.selectors.organizations_with_pending_usage``: a Stripe customer, and
    pending billing events of a metered event name before the current hour, or outbox
    rows still to send), through ``report_queue``, the same path as ``POST
    report-usage/``: an organization whose report job is still waiting or running gets
    no second one. Returns the number of report jobs deferred."""
    from billing.reporting.identifiers import current_hour
    from billing.reporting.queue import report_queue
    from billing.selectors import organizations_with_pending_usage
    from tenancy.context import cross_tenant, tenant_context

    with cross_tenant(reason="hourly usage reports: organizations with pending usage"):
        organizations = list(
            organizations_with_pending_usage(
                meters=list(settings.STRIPE_METERS), before=current_hour()
            )
        )
    deferred = 0
    for organization in organizations:  # one transaction each, in its tenant context
        with tenant_context(organization):
            report, created = report_queue(organization=organization)
        deferred += created
        if not created:
            logger.info(
                "%s: report %s is still %s; no second report queued",
                organization.slug,
                report.pk,
                report.status,
            )
    logger.info(
        "usage reports scheduled: %s deferred for %s organization(s) with pending usage",
        deferred,
        len(organizations),
    )
    return deferred
