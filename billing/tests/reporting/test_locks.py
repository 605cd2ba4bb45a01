"""``billing.reporting.locks``: one run at a time per organization (another run, or the
hourly command, is skipped while one holds the lock)."""

from io import StringIO

import psycopg
from django.core.management import call_command
from django.db import connection

from billing.models import MeterReport, MeterReportStatus
from billing.reporting import runs
from billing.tests.reporting.scenario import add_events, lock_key


def test_a_second_run_for_the_same_organization_is_skipped_while_one_runs(
    fake_stripe, customer_org
):
    add_events(customer_org, [("api.request", 0, 1, "1")])
    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key(customer_org)])  # another run
        result = runs.report_usage(organization=customer_org)
        assert result.report.status == MeterReportStatus.SKIPPED
        assert "another usage report for acme-law is running" in result.report.detail
        assert "skipped" in result.report.detail
        # the hourly command overlapping it: skipped too, and not a failure (exit 0)
        out = StringIO()
        call_command("report_usage", stdout=out, stderr=StringIO())
        assert "[1] acme-law: skipped: another usage report" in out.getvalue()
        assert "1 skipped (another run was reporting them)" in out.getvalue()
        assert fake_stripe.requests == []
        statuses = set(MeterReport.objects.values_list("status", flat=True))
        assert statuses == {MeterReportStatus.SKIPPED}
        other.execute("SELECT pg_advisory_unlock(%s)", [lock_key(customer_org)])
    finally:
        other.close()
    runs.report_usage(organization=customer_org)
    assert len(fake_stripe.requests) == 1
