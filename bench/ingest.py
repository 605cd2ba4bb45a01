"""How fast events go in: ``events_ingest`` in batches of 1,000 beside PostgreSQL's COPY.

1,000,000 ``api.request`` events over 1,000 organizations, each with its own
request id (idempotency on):

1. baselines: ``COPY`` of the same rows (same columns and values, built by the
   same validation, ``billing.ingest.event_values``, before the clock starts) (a) into
   ``bench_ingest_copy``, a fresh table made with ``CREATE TABLE ... (LIKE
   billing_events INCLUDING ALL)`` (same columns, defaults, primary key, partial
   unique index and indexes, but empty), (b) into billing_events itself, with
   request ids of its own, in one COPY statement and one transaction: the same indexes
   *and* the same existing rows as ``events_ingest`` faces, and (c) the same as (b) in
   one transaction (one COMMIT, one WAL flush) per 1,000 rows, as ``events_ingest``
   commits. The ratio target is taken against (b): with millions of rows already
   there (e.g. the 10M of bench/usage_summary.py), index maintenance dominates, and
   an empty table would flatter COPY.

   (a) and (b) build every row before their clock starts (about 0.9 KB of memory per
   row: some 900 MB at 1M). Building them chunk by chunk with the clock stopped would
   flatter COPY: the server goes on inserting the rows already sent while the client
   builds the next chunk off the clock, so part of the server's work is never timed
   (seen: 64-71k/s measured that way against 37-41k/s with the rows built first, on
   the same table in the same minutes). ``events_ingest``'s clock has no such gap:
   each batch ends with its COMMIT before the clock stops;
2. ``billing.services.events_ingest`` (returns the number created) in batches of
   1,000 into billing_events, each batch one ``cross_tenant`` transaction;
3. the same events again (every one a conflict), to show what deduplication costs;
4. ``events_record`` (returns the created events) on other request ids.

Prints events/s for each and the ratios; checks that pass 2 created every event,
pass 3 none and pass 4 returned every event it created. The number of rows
billing_events already held is printed.

Cleans up after itself (drops the COPY table, deletes its events).
``--quick``: 100,000 events over 100 organizations.
Usage: ``python bench/ingest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Progress, Section, setup_django  # noqa: E402

SIZES = {
    "full": {"events": 1_000_000, "orgs": 1_000},
    "quick": {"events": 100_000, "orgs": 100},
}
PREFIX = "bench-ing-"
BATCH = 1_000
COPY_TABLE = "bench_ingest_copy"
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def organizations(n: int) -> list:
    """The ingest organizations (idempotent on slug), in slug order."""
    from tenancy.models import Organization

    existing = set(
        Organization.objects.filter(slug__startswith=PREFIX).values_list("slug", flat=True)
    )
    Organization.objects.bulk_create(
        Organization(name=f"Ingest bench {i}", slug=f"{PREFIX}{i:04d}", plan_tier="pro")
        for i in range(n)
        if f"{PREFIX}{i:04d}" not in existing
    )
    return list(Organization.objects.filter(slug__startswith=PREFIX).order_by("slug")[:n])


def event_fields(i: int, orgs: list, prefix: str = "ing-") -> dict:
    """Event ``i``: organization ``i % len(orgs)``, a unique request id (``prefix`` and
    ``i``), 1 call at 1 cent."""
    return {
        "organization": orgs[i % len(orgs)],
        "event_type": "api",
        "event_name": "api.request",
        "request_id": f"{prefix}{i:08d}",
        "quantity": Decimal("1"),
        "unit": "call",
        "unit_cost_cents": 1,
        "dimensions": {
            "endpoint": "/api/v1/cases/",
            "route": "/api/v1/cases/",
            "method": "GET",
            "status_code": 200,
            "duration_ms": 12.5,
            "request_id": f"{prefix}{i:08d}",
        },
        "created_at": T0 + timedelta(milliseconds=i),
    }


def copy_rows(total: int, orgs: list, request_prefix: str):
    """The rows COPY writes (``billing.ingest.EVENT_COLUMNS`` order): the values
    ``events_record`` stores for the same input, built by the same validation
    (``billing.ingest.event_values``: a UUIDv7, the price, ``status`` 0, no user, no
    resource). ``request_prefix`` replaces ``ing-`` in the request ids (so COPY rows never
    collide with the others)."""
    from billing.ingest import EVENT_COLUMNS, BatchDefaults, dimensions_json, event_values

    json_at = EVENT_COLUMNS.index("dimensions")
    defaults = BatchDefaults()
    for i in range(total):
        f = event_fields(i, orgs)
        f["request_id"] = f["request_id"].replace("ing-", request_prefix, 1)
        row = list(event_values(**f, defaults=defaults))
        row[json_at] = dimensions_json(row[json_at])
        yield tuple(row)


def run_copy(total: int, orgs: list, *, table: str, per_batch: bool = False) -> float:
    """COPY ``total`` rows into ``table`` in one COPY statement and one transaction, or
    with ``per_batch`` one COPY and one transaction (one COMMIT, one WAL flush) per
    ``BATCH`` rows, as ``events_ingest`` commits (request ids ``copyb-...``).

    ``table`` is ``COPY_TABLE`` (created fresh: ``LIKE billing_events INCLUDING ALL``)
    or ``billing_events`` itself (same indexes and same existing rows as what
    ``events_record`` writes into; request ids ``copy-...``, deleted by ``cleanup``).
    Returns the seconds spent writing and committing. One COPY statement: every row is
    built before the clock starts (see the module's docstring); per batch: each chunk of
    ``BATCH`` rows is built with the clock stopped, between COMMITs, when the server is
    idle, as for ``events_ingest``."""
    from django.db import connection

    from tenancy.rls.roles import owner_connection

    # Both baselines run on the login (owner) connection: the app role may not create
    # tables, and PostgreSQL refuses COPY FROM into a table whose row-level security
    # applies to the role ("COPY FROM not supported with row-level security"; the bench
    # logs in as a superuser, which RLS does not apply to). events_record runs as the
    # app role, policies included: the baseline is the raw physical cost.
    with owner_connection():
        if table == COPY_TABLE:
            with connection.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
                cur.execute(f"CREATE TABLE {COPY_TABLE} (LIKE billing_events INCLUDING ALL)")
        if per_batch:
            return _copy_batches(total, orgs)
        return _copy(total, orgs, table)


def _copy_batches(total: int, orgs: list) -> float:
    from django.db import connection

    from billing.ingest import EVENT_COLUMNS

    connection.ensure_connection()
    raw = connection.connection
    progress = Progress("COPY into billing_events, a transaction per batch", total)
    rows = copy_rows(total, orgs, "copyb-")
    elapsed = 0.0
    with raw.cursor() as cur:
        for lo in range(0, total, BATCH):
            chunk = [next(rows) for _ in range(min(BATCH, total - lo))]
            t0 = time.perf_counter()
            with raw.transaction():
                with cur.copy(f"COPY billing_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as c:
                    for row in chunk:
                        c.write_row(row)
            elapsed += time.perf_counter() - t0
            progress.update(lo + len(chunk))
    return elapsed


def _copy(total: int, orgs: list, table: str) -> float:
    from django.db import connection

    from billing.ingest import EVENT_COLUMNS

    connection.ensure_connection()
    raw = connection.connection
    # Every row built before the clock starts (see the module's docstring, (a) and (b)).
    rows = list(copy_rows(total, orgs, "copy-" if table == "billing_events" else "ing-"))
    progress = Progress(f"COPY into {table}", total)
    with raw.cursor() as cur:
        t0 = time.perf_counter()
        with raw.transaction():
            with cur.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
                for lo in range(0, total, BATCH):
                    for row in rows[lo : lo + BATCH]:
                        copy.write_row(row)
                    progress.update(min(lo + BATCH, total))
        elapsed = time.perf_counter() - t0  # the COPY, its end and the COMMIT
    return elapsed


def run_record_events(
    total: int, orgs: list, label: str, *, ingest: bool, prefix: str = "ing-"
) -> tuple[float, int]:
    """``events_ingest`` (``ingest``: returns the number created) or ``events_record``
    (returns the created events) in batches of ``BATCH``; returns (seconds inside the
    call, events created). Building each batch's input is outside the clock. Each batch is one
    transaction, opened by ``cross_tenant`` (a batch spans many organizations; row-level
    security admits them only on that explicit path), inside the clock."""
    from billing.services import events_ingest, events_record
    from tenancy.context import cross_tenant

    def write(batch) -> int:
        return events_ingest(batch) if ingest else len(events_record(batch))

    progress = Progress(label, total)
    created, elapsed = 0, 0.0
    for lo in range(0, total, BATCH):
        batch = [event_fields(i, orgs, prefix) for i in range(lo, min(lo + BATCH, total))]
        t0 = time.perf_counter()
        with cross_tenant(reason="bench ingest: one batch of many organizations"):
            created += write(batch)
        elapsed += time.perf_counter() - t0
        progress.update(lo + len(batch))
    return elapsed, created


def count_events(orgs: list, prefix: str = "ing-") -> int:
    """Events of ``orgs`` whose request ids start with ``prefix``."""
    from django.db import connection

    from tenancy.rls.roles import owner_connection

    with owner_connection(), connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM billing_events WHERE organization_id = ANY(%s)"
            " AND request_id LIKE %s",
            [[o.pk for o in orgs], f"{prefix}%"],
        )
        return cur.fetchone()[0]


def cleanup(orgs: list) -> None:
    from django.db import connection

    from tenancy.rls.roles import owner_connection

    with owner_connection(), connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        cur.execute(
            "DELETE FROM billing_events WHERE organization_id = ANY(%s)", [[o.pk for o in orgs]]
        )
    # Millions of dead rows would otherwise be vacuumed by autovacuum at some moment of the
    # next benchmark (bench/usage_summary.py, or request_overhead in the next make bench),
    # adding noise to its figures: vacuum now, on the clock of nobody (owner role).
    started = time.perf_counter()
    with owner_connection(), connection.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) billing_events")
    print(f"  cleanup: VACUUM (ANALYZE) billing_events in {time.perf_counter() - started:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, 100 organizations")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    total = size["events"]

    setup_django()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    orgs = organizations(size["orgs"])
    cleanup(orgs)
    with connection.cursor() as cur:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'billing_events'")
        existing = max(cur.fetchone()[0], 0)
    print(
        f"ingest: {total:,} events over {len(orgs):,} organizations, batches of {BATCH:,}; "
        f"billing_events already holds ~{existing:,} rows",
        file=sys.stderr,
    )
    section = Section(
        "ingest",
        params={
            "events": total,
            "organizations": len(orgs),
            "batch": BATCH,
            "billing_events_rows_before": existing,
        },
    )
    try:
        copy_fresh_s = run_copy(total, orgs, table=COPY_TABLE)
        copy_s = run_copy(total, orgs, table="billing_events")
        copyb_s = run_copy(total, orgs, table="billing_events", per_batch=True)
        ing_s, created = run_record_events(total, orgs, "events_ingest", ingest=True)
        rows_after_first = count_events(orgs)
        dup_s, created_again = run_record_events(
            total, orgs, "events_ingest, all duplicates", ingest=True
        )
        rows_after_second = count_events(orgs)
        rec_s, returned = run_record_events(
            total, orgs, "events_record", ingest=False, prefix="rec-"
        )
        rows_recorded = count_events(orgs, "rec-")
    finally:
        cleanup(orgs)

    copy_rate, ing_rate, dup_rate = total / copy_s, total / ing_s, total / dup_s
    rec_rate, copyb_rate = total / rec_s, total / copyb_s
    section.add(
        "COPY into a fresh identical table (LIKE billing_events INCLUDING ALL)",
        total / copy_fresh_s,
        "events/s",
    )
    section.add(
        "COPY into billing_events (same indexes, same existing rows): baseline",
        copy_rate,
        "events/s",
    )
    section.add(
        "events_ingest, batches of 1,000, idempotent (returns the count)",
        ing_rate,
        "events/s",
        "COPY into billing_events",
        copy_rate,
        target=">= 0.6 of COPY",
        met=ing_rate / copy_rate >= 0.6,
    )
    section.add(
        "events_ingest, batches of 1,000 (a transaction each)",
        ing_rate,
        "events/s",
        "COPY into billing_events, a transaction per 1,000",
        copyb_rate,
    )
    section.add(
        "events_record, batches of 1,000 (returns the created events)",
        rec_rate,
        "events/s",
        "COPY into billing_events",
        copy_rate,
    )
    section.add(
        "events_ingest throughput",
        ing_rate,
        "events/s",
        "Lago PostgreSQL-only (documented)",
        10_000,
        target=">= 30,000 events/s",
        met=ing_rate >= 30_000,
    )
    section.add(
        "events_ingest, every event a duplicate (dedup pass)",
        dup_rate,
        "events/s",
        "COPY into billing_events",
        copy_rate,
        target=">= 0.6 of COPY",
        met=dup_rate / copy_rate >= 0.6,
    )
    section.check(
        "first pass created every event",
        created == total and rows_after_first == total,
        f"returned {created:,} created, {rows_after_first:,} rows, {total:,} sent",
    )
    section.check(
        "dedup pass created nothing",
        created_again == 0 and rows_after_second == total,
        f"returned {created_again:,} created, {rows_after_second:,} rows",
    )
    section.check(
        "events_record returned every event it created",
        returned == total and rows_recorded == total,
        f"returned {returned:,} events, {rows_recorded:,} rows, {total:,} sent",
    )
    section.save()
    return 1 if section.failed else 0


if __name__ == "__main__":
    sys.exit(main())
