"""How fast usage comes out: one organization's month at 10,000,000 events.

Generates (once; re-used while the row count matches) 10,000,000 billing_events
over 1,000 organizations and 12 months with set-based SQL (``INSERT ... SELECT
generate_series``, month by month in time order, as events arrive), then times
for one organization, 100 runs each, p50/p99 in ms:

* the month's usage summary and the usage report grouped by day through the
  real selectors (``billing.usage``), with the cache cold (cleared before
  every run) and warm, when the metering issue's selectors are present;
* beside them, the same aggregates as a plain ``GROUP BY`` over the raw table
  (the baseline: what the database does with the indexes the model declares).

``--quick``: 300,000 events over 100 organizations (separate organizations, so
the full data set is not touched). Usage: ``python bench/usage_summary.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Progress, Section, percentile, setup_django  # noqa: E402

#: 12 months, half-open: [2025-11-01, 2026-11-01) UTC
MONTHS = [datetime(2025 + (10 + i) // 12, (10 + i) % 12 + 1, 1, tzinfo=UTC) for i in range(13)]
SIZES = {
    "full": {"events": 10_000_000, "orgs": 1_000, "prefix": "bench-sum-"},
    "quick": {"events": 300_000, "orgs": 100, "prefix": "bench-sumq-"},
}
RUNS = 100

# One month of events, set-based. Event i of the month (0-based, of n) belongs to
# organization i % orgs, has type (i / orgs) % 100 and happens at month_start + i/n
# of the month: rows go in in time order, as real traffic does. 90 % api.request
# (1 call, 1 cent, a unique request id), 7 % doc.upload (1 document, 5 cents),
# 3 % doc.processed (pages, 2 cents).
_INSERT_MONTH = """
INSERT INTO billing_events (id, organization_id, user_id, event_type, event_name, resource_id,
    request_id, quantity, unit, unit_cost_cents, dimensions, status, created_at)
SELECT gen_random_uuid(),
       (%(orgs)s::uuid[])[1 + (g %% %(norgs)s)],
       NULL,
       k.event_type, k.event_name, NULL,
       CASE WHEN k.event_name = 'api.request' THEN %(tag)s || g END,
       k.quantity, k.unit, k.cents,
       CASE WHEN k.event_name = 'api.request'
            THEN jsonb_build_object('endpoint', '/api/v1/cases/', 'method', 'GET',
                                    'status_code', 200, 'duration_ms', 12)
            ELSE '{}'::jsonb END,
       CASE WHEN %(start)s < %(posted_before)s THEN 1 ELSE 0 END,
       %(start)s + (%(end)s - %(start)s) * ((g - %(month_lo)s)::float8 / %(n)s)
FROM generate_series(%(lo)s, %(hi)s) AS g
CROSS JOIN LATERAL (
    SELECT * FROM (VALUES
        ('api', 'api.request', 1::numeric, 'call', 1),
        ('document', 'doc.upload', 1::numeric, 'document', 5),
        ('document', 'doc.processed', (1 + g %% 12)::numeric, 'page', 2)
    ) AS v(event_type, event_name, quantity, unit, cents)
    WHERE v.event_name = CASE WHEN (g / %(norgs)s) %% 100 < 90 THEN 'api.request'
                              WHEN (g / %(norgs)s) %% 100 < 97 THEN 'doc.upload'
                              ELSE 'doc.processed' END
) AS k
"""

#: The baseline: the month's summary as a plain GROUP BY over the raw table.
RAW_SUMMARY = """
SELECT event_name, unit, count(*) AS events, sum(quantity) AS quantity,
       sum(quantity * unit_cost_cents) AS amount_cents
FROM billing_events
WHERE organization_id = %s AND created_at >= %s AND created_at < %s
GROUP BY event_name, unit
ORDER BY event_name, unit
"""
RAW_BY_DAY = """
SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day, event_name, unit,
       count(*) AS events, sum(quantity) AS quantity,
       sum(quantity * unit_cost_cents) AS amount_cents
FROM billing_events
WHERE organization_id = %s AND created_at >= %s AND created_at < %s
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def organizations(size: dict) -> list[str]:
    """The benchmark organizations (idempotent on slug); returns their ids in slug order."""
    from tenancy.models import Organization

    prefix, n = size["prefix"], size["orgs"]
    existing = set(
        Organization.objects.filter(slug__startswith=prefix).values_list("slug", flat=True)
    )
    Organization.objects.bulk_create(
        Organization(name=f"Usage bench {i}", slug=f"{prefix}{i:04d}", plan_tier="pro")
        for i in range(n)
        if f"{prefix}{i:04d}" not in existing
    )
    return [
        str(pk)
        for pk in Organization.objects.filter(slug__startswith=prefix)
        .order_by("slug")
        .values_list("pk", flat=True)[:n]
    ]


def event_count(org_ids: list[str]) -> int:
    from django.db import connection

    from tenancy.context import cross_tenant

    with cross_tenant(reason="bench: count the generated events"), connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM billing_events WHERE organization_id = ANY(%s::uuid[])",
            [org_ids],
        )
        return cur.fetchone()[0]


def generate(size: dict, org_ids: list[str]) -> float:
    """(Re)generate the data set: deletes these organizations' events, inserts them
    (``generate_range``), then VACUUM (ANALYZE) as the owner. Returns the seconds taken."""

    started = time.perf_counter()
    delete_events(org_ids)
    generate_range(size, org_ids, 0, size["events"])
    return time.perf_counter() - started


def delete_events(org_ids: list[str]) -> None:
    """Delete the data set's events (the benchmark organizations' only)."""
    from django.db import connection

    from tenancy.context import cross_tenant

    with cross_tenant(reason="bench: delete the usage data set"), connection.cursor() as cur:
        cur.execute("DELETE FROM billing_events WHERE organization_id = ANY(%s::uuid[])", [org_ids])


def generate_range(size: dict, org_ids: list[str], first: int, stop: int) -> None:
    """Insert events ``first`` to ``stop - 1`` of the data set (numbered in time order over
    its 12 months, ``size["events"]`` in all), month by month, one transaction each, on the
    explicit cross-tenant path (the rows belong to many organizations); then VACUUM
    (ANALYZE) as the owner. Ranges generated one after another make exactly the rows of
    one whole generation (bench/growth.py measures between them)."""
    from django.db import connection

    from tenancy.context import cross_tenant
    from tenancy.rls.roles import owner_connection

    total, n_orgs = size["events"], len(org_ids)
    per_month = total // 12
    progress = Progress("generating billing_events", stop - first)
    for m in range(12):
        month_lo = m * per_month
        n = per_month if m < 11 else total - month_lo
        lo, hi = max(first, month_lo), min(stop, month_lo + n)
        if lo >= hi:
            continue
        with cross_tenant(reason="bench: generate the usage data set"), connection.cursor() as cur:
            cur.execute(
                _INSERT_MONTH,
                {
                    "orgs": org_ids,
                    "norgs": n_orgs,
                    "tag": f"{size['prefix']}req-",
                    "start": MONTHS[m],
                    "end": MONTHS[m + 1],
                    "posted_before": MONTHS[11],
                    "lo": lo,
                    "hi": hi - 1,
                    "n": n,
                    "month_lo": month_lo,
                },
            )
        progress.update(hi - first)
    with owner_connection(), connection.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) billing_events")


def time_sql(sql: str, params, runs: int = RUNS) -> list[float]:
    """Milliseconds of each of ``runs`` executions (fetching every row), after one warm-up."""
    from django.db import connection

    times = []
    with connection.cursor() as cur:
        for i in range(runs + 1):
            t0 = time.perf_counter()
            cur.execute(sql, params)
            cur.fetchall()
            if i:
                times.append((time.perf_counter() - t0) * 1000.0)
    return times


def time_call(fn, runs: int = RUNS, before=None) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn`` (after one warm-up call);
    ``before`` (untimed) runs before every call, e.g. to clear a cache."""
    times = []
    for i in range(runs + 1):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        if i:
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def plan(sql: str, params) -> str:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
        return "\n".join(r[0] for r in cur.fetchall())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300,000 events, 100 organizations")
    parser.add_argument(
        "--regenerate", action="store_true", help="regenerate the events even if present"
    )
    parser.add_argument("--explain", action="store_true", help="print the raw queries' plans")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]

    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    org_ids = organizations(size)
    have = event_count(org_ids)
    generated_s = None
    if args.regenerate or have != size["events"]:
        print(
            f"usage_summary: generating {size['events']:,} events over {len(org_ids):,} "
            f"organizations and 12 months (found {have:,})",
            file=sys.stderr,
        )
        generated_s = generate(size, org_ids)
    else:
        print(f"usage_summary: re-using {have:,} generated events", file=sys.stderr)

    org = org_ids[len(org_ids) // 2]
    month_start, month_end = MONTHS[10], MONTHS[11]  # a full month: 2026-09
    section = Section(
        "usage_summary",
        params={
            "events": size["events"],
            "organizations": len(org_ids),
            "months": 12,
            "month": month_start.strftime("%Y-%m"),
            "runs": RUNS,
            "generated_in_s": round(generated_s, 1) if generated_s else "re-used",
        },
    )
    if generated_s:
        section.add(
            "events generated (set-based SQL, 5 indexes)",
            size["events"] / generated_s,
            "events/s",
        )
    # cold: a different organization each run (the first query for it in this run; the
    # selectors keep no application cache); warm: the same organization again and again.
    # The raw figures use one half of the organizations and the selectors the other.
    others = [o for o in org_ids if o != org]
    raw_cold_orgs, sel_cold_orgs = others[0::2][:RUNS], others[1::2][:RUNS]
    raw = {}
    from tenancy.context import cross_tenant

    # The raw baseline runs on the explicit cross-tenant path (one transaction; the policy's
    # first terms admit every row), the selectors each in their organization's context.
    for key, sql, label in (
        ("summary", RAW_SUMMARY, "usage-summary (month)"),
        ("by_day", RAW_BY_DAY, "usage-report by day"),
    ):
        with cross_tenant(reason="bench: raw GROUP BY baseline"):
            warm = time_sql(sql, [org, month_start, month_end])
            cold = time_each(
                lambda o, sql=sql: _fetch(sql, [o, month_start, month_end]), raw_cold_orgs
            )
        raw[key] = {"cold": cold, "warm": warm}
        _rows(section, f"{label}, raw GROUP BY", cold, warm)
    if args.explain:
        print(plan(RAW_SUMMARY, [org, month_start, month_end]), file=sys.stderr)
    _selector_rows(section, org, sel_cold_orgs, month_start, month_end, raw)
    section.save()
    return 1 if section.failed else 0


def _fetch(sql: str, params) -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(sql, params)
        cur.fetchall()


def time_each(fn, items, before=None) -> list[float]:
    """Milliseconds of ``fn(item)`` for each item (``before`` runs untimed before each)."""
    times = []
    for item in items:
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _rows(section, label: str, cold: list[float], warm: list[float], baseline=None) -> None:
    """p50 and p99 rows for cold and warm runs; ``baseline``: the raw figures to compare with."""
    for state, times in (("cold", cold), ("warm", warm)):
        for pct, target in ((50, 20), (99, 100)):
            value = percentile(times, pct)
            base = percentile(baseline[state], pct) if baseline else None
            section.add(
                f"{label}, {state}, p{pct}",
                value,
                "ms",
                "raw GROUP BY" if baseline else "",
                base,
                target=f"<= {target} ms",
                met=value <= target,
            )


def _selector_rows(section, org_id, cold_orgs, start, end, raw) -> None:
    """Time ``billing.usage.usage_summary`` and ``usage_report(group_by="day")``, the
    functions the API calls, each call in its organization's ``tenant_context`` (its
    transaction and settings included), cold (a different organization each run) and warm.
    They keep no application cache, so "cache" here is PostgreSQL's and the OS's page cache."""
    from billing.usage import usage_report, usage_summary
    from tenancy.context import tenant_context
    from tenancy.models import Organization

    orgs = Organization.objects.in_bulk([org_id, *cold_orgs])
    calls = (
        ("usage-summary (month), billing.usage", usage_summary, {}, "summary"),
        ("usage-report by day, billing.usage", usage_report, {"group_by": "day"}, "by_day"),
    )
    for label, fn, extra, key in calls:

        def call(o, fn=fn, extra=extra):
            with tenant_context(orgs[_uuid(o)]):  # as a request runs it
                return fn(organization=orgs[_uuid(o)], start=start, end=end, **extra)

        warm = time_each(call, [org_id] * (RUNS + 1))[1:]
        cold = time_each(call, cold_orgs)
        _rows(section, label, cold, warm, baseline=raw[key])


def _uuid(value):
    import uuid

    return uuid.UUID(str(value))


if __name__ == "__main__":
    sys.exit(main())
