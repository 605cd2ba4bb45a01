"""``manage.py report_usage``: send pending metered usage to Stripe (see billing/reporting/)."""

import logging
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.models import MeterReportStatus
from billing.reporting.identifiers import current_hour
from billing.reporting.runs import report_usage
from core.filters import utc_instant
from tenancy.models import Organization

logger = logging.getLogger("billing.reporting")

FAILED = {MeterReportStatus.FAILED, MeterReportStatus.PARTIAL}
#: How many skipped organizations the summary line names (``--verbose``: each on its line).
SKIPPED_NAMED = 5


class Command(BaseCommand):
    """``manage.py report_usage [--organization SLUG] [--until ISO] [--dry-run]``.

    Runs ``billing.reporting.runs.report_usage`` for each organization (by slug), one at a
    time, in this process, and prints one line per aggregate sent, failed or needing
    reconciliation; organizations without a Stripe customer are summed up in one line
    (``--verbose``: one line each), and an ``--until`` in the future is capped at now, and
    said so. The same work as the ``billing.report_usage`` job that the hourly
    schedule and ``POST /api/v1/billing/report-usage/`` queue (``billing.tasks``), run
    here inline for an operator; a job running for the same organization meanwhile makes
    this run ``skipped`` (the organization's lock). An error in one organization's run (a
    database error included) is logged with its traceback and counted; the other
    organizations are still reported.
    """

    help = (
        "Aggregate pending billing events per organization, Stripe meter and UTC hour, and send "
        "each aggregate as a Stripe meter event (identifier and Idempotency-Key derived from the "
        "aggregate, so nothing counts twice). Events become 'posted' only once Stripe "
        "acknowledged their aggregate. Aggregates first sent more than "
        "STRIPE_RESEND_WINDOW_HOURS (23) ago are not resent but flagged for reconciliation. "
        "Without STRIPE_API_KEY this is a dry run. An organization whose reporting is already "
        "running elsewhere is skipped. Exits 1 if any aggregate or organization failed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--organization", metavar="SLUG", help="Only this organization.")
        parser.add_argument(
            "--until",
            metavar="ISO",
            help="Exclusive end of the events to report (ISO 8601; naive = UTC). "
            "Default: the start of the current UTC hour (complete hours only).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show what would be sent; send nothing and change no event or aggregate (the "
            "run itself is recorded, as a meter report with status dry_run).",
        )
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="One line per organization skipped for having no Stripe customer (by default "
            "one summary line names a few and counts them all).",
        )

    def handle(self, *args, **opts):
        """Report every selected organization's usage before ``--until`` (default: the
        start of the current UTC hour; never later than now).

        Raises:
            CommandError: unknown ``--organization``, an ``--until`` that is not ISO
                8601, or (exit status 1, after the summary, every organization having
                been tried) an organization whose run failed, was partial, or raised.
                A run skipped because another run held the organization's lock is not
                a failure (that run does the work).
        """
        requested, now = self._until(opts["until"]), timezone.now()
        until = min(requested, now)  # never in the future
        if requested > now:
            self.stdout.write(
                f"--until {requested.isoformat()} is in the future: capped at now, "
                f"{now.isoformat()} (Stripe refuses meter events with future timestamps)."
            )
        organizations = Organization.objects.order_by("slug")
        if opts["organization"]:
            organizations = organizations.filter(slug=opts["organization"])
            if not organizations.exists():
                raise CommandError(f"No organization with slug {opts['organization']!r}.")
        dry_run = opts["dry_run"] or not settings.STRIPE_API_KEY
        if not settings.STRIPE_API_KEY:
            self.stdout.write("STRIPE_API_KEY is not set: dry run, nothing is sent or posted.")
        self.stdout.write(
            f"Reporting usage before {until.isoformat()} for "
            f"{organizations.count()} organization(s)."
        )
        failures = 0
        totals = {"sent": 0, "failed": 0, "posted": 0, "skipped": 0, "busy": 0}
        no_customer: list[str] = []  # slugs skipped for having no Stripe customer
        for index, organization in enumerate(organizations, start=1):
            prefix = f"[{index}] {organization.slug}:"
            try:
                result = report_usage(organization=organization, until=until, dry_run=dry_run)
            except Exception as exc:  # one organization's error must not stop the others
                failures += 1
                logger.error(
                    "report_usage: organization %s failed", organization.slug, exc_info=True
                )
                self.stderr.write(f"{prefix} FAILED: {type(exc).__name__}: {exc}")
                continue
            report = result.report
            if report.status == MeterReportStatus.SKIPPED:
                if organization.stripe_customer_id:
                    totals["busy"] += 1
                    self.stdout.write(f"{prefix} skipped: {report.detail}")
                else:
                    totals["skipped"] += 1
                    no_customer.append(organization.slug)
                    if opts["verbose"]:
                        self.stdout.write(f"{prefix} skipped: {report.detail}")
                continue
            for planned in result.planned:
                self.stdout.write(
                    f"{prefix} would send {planned['identifier']} meter={planned['meter']} "
                    f"value={planned['value']} ({planned['events']} events)"
                )
            for line in result.lines:
                self.stdout.write(f"{prefix} {line}")
            totals["sent"] += report.aggregates_sent
            totals["failed"] += report.aggregates_failed
            totals["posted"] += report.events_posted
            if report.status in FAILED:
                failures += 1
        if no_customer and not opts["verbose"]:
            named = ", ".join(no_customer[:SKIPPED_NAMED])
            more = len(no_customer) - SKIPPED_NAMED
            self.stdout.write(
                f"Skipped {len(no_customer):,} organization(s) without a Stripe customer "
                f"(stripe_customer_id): {named}"
                + (f" and {more:,} more" if more > 0 else "")
                + " (--verbose lists each)."
            )
        self.stdout.write(
            f"Done: {totals['sent']} meter event(s) sent, {totals['failed']} failed, "
            f"{totals['posted']} billing event(s) posted, {totals['skipped']} organization(s) "
            "skipped (no Stripe customer)"
            + (
                f", {totals['busy']} skipped (another run was reporting them)."
                if totals["busy"]
                else "."
            )
        )
        if failures:
            raise CommandError(f"{failures} organization(s) had failures; see above.")

    @staticmethod
    def _until(value):
        if not value:
            return current_hour()
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError(f"--until {value!r} is not an ISO 8601 date or datetime.") from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        try:  # in UTC: PostgreSQL takes offsets up to 15:59 only (core.filters)
            return utc_instant(parsed)
        except ValueError:
            raise CommandError(f"--until {value!r} is out of range in UTC.") from None
