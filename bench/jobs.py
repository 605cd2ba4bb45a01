"""Benchmark: the task queue (procrastinate) beside a plain INSERT, and the upload's latency.

    python bench/jobs.py            # 5,000 jobs, 200 uploads
    python bench/jobs.py --quick    # 500 jobs, 40 uploads

Self-contained: creates its own database ``<name of DATABASE_URL's db>_bench_jobs`` on the
same server (the embedded one without DATABASE_URL), migrates it, and drops it at the end
(``--keep`` keeps it). Its processes use ``bench._jobs_settings``: the project's settings
plus a no-op task ``bench.noop`` on the queue ``bench``.

1. **The floor:** a plain ``INSERT`` of the same rows (queue, task name, JSON arguments)
   into ``bench_jobs_floor``, a copy of ``procrastinate_jobs`` (``LIKE ... INCLUDING ALL``:
   same columns, defaults and indexes, none of procrastinate's triggers), one row per
   transaction, as a request defers one job in its own transaction.
2. **Deferred:** ``noop.defer(i=...)`` through procrastinate on Django's connection, one
   per transaction (its ``procrastinate_defer_jobs`` function, the status-event trigger and
   the NOTIFY to listening workers included). Jobs/s beside the floor.
3. **Completed:** two ``manage.py procrastinate worker --queues bench,documents``
   processes (default concurrency 1, log level WARNING), started and registered first;
   then N jobs are deferred in one batch and the clock runs until every one is
   ``succeeded`` (fetch with ``SKIP LOCKED``, run, finish: a round trip each way per job).
   Jobs/s beside the floor.
4. **Upload latency:** ``POST /api/v1/documents/`` of a PDF (``--pages``, default 30)
   through Django's test client (the whole middleware stack and the database, no network),
   p50 over ``--uploads`` per variant, the two interleaved: (a) as now, processing deferred
   to the two workers, which run meanwhile (on the same 2 cores); (b) processing in the
   request, as before: an ``on_commit`` callback ran ``document_process`` in the web
   process before the 201 went out. The ratio (a)/(b) is what moving the work out of the
   request saves the upload (or costs it, where the workers compete for the CPU).

Checks: every job deferred in 3 succeeded; the (a) uploads answered ``pending`` and were
all processed by the workers; the (b) uploads were processed by the time their 201 came
(which still said ``pending``: the body is rendered before the commit). Prints the table and
records it (section ``jobs``) in ``bench/results/latest.json``. Wall-clock times, on
whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, Section, bench_env, percentile  # noqa: E402
from cases.testing import pdf_bytes  # noqa: E402

SIZES = {"full": {"jobs": 5_000, "uploads": 200}, "quick": {"jobs": 500, "uploads": 40}}
SETTINGS = "bench._jobs_settings"
FLOOR_TABLE = "bench_jobs_floor"


def _base_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url:
        return url
    from goldleaves.embedded_db import embedded_database_url

    return embedded_database_url(ROOT / ".data")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name)))


def _libpq(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def _count(sql: str, params=None) -> int:
    """``sql``'s count over every organization: through ``cross_tenant``, since the app role
    (the benchmark's login, or its ``SET ROLE``) sees no tenant row without an organization."""
    from django.db import connection

    from tenancy.context import cross_tenant

    with cross_tenant(reason="bench: counting the benchmark's rows"), connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchone()[0]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"jobs benchmark: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def floor_inserts(n: int, owner_url: str) -> float:
    """Seconds for ``n`` single-row INSERTs (autocommit, as the app role like the defers)
    into a copy of the jobs table, which the owner creates (the app role may not)."""
    import psycopg
    from django.conf import settings
    from django.db import connection

    role = settings.DATABASE_APP_ROLE
    with psycopg.connect(owner_url, autocommit=True) as owner:
        owner.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
        owner.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE procrastinate_jobs INCLUDING ALL)")
        if role:
            owner.execute(f'GRANT INSERT ON {FLOOR_TABLE} TO "{role}"')
    sql = (
        f"INSERT INTO {FLOOR_TABLE} (queue_name, task_name, priority, args) "
        "VALUES (%s, %s, 0, %s::jsonb)"
    )
    try:
        with connection.cursor() as cursor:
            t0 = time.perf_counter()
            for i in range(n):
                cursor.execute(sql, ["bench", "bench.noop", f'{{"i": {i}}}'])
            return time.perf_counter() - t0
    finally:
        with psycopg.connect(owner_url, autocommit=True) as owner:
            owner.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")


def defers(n: int) -> float:
    """Seconds for ``n`` ``noop.defer`` calls, each in its own transaction (autocommit)."""
    from bench._jobs_tasks import noop

    t0 = time.perf_counter()
    for i in range(n):
        noop.defer(i=i)
    return time.perf_counter() - t0


def start_workers(env: dict, count: int = 2) -> list[subprocess.Popen]:
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "procrastinate",
                "worker",
                "--queues",
                "bench,documents",
                "--name",
                f"bench-{k}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k in range(count)
    ]
    _wait(
        lambda: _count("SELECT count(*) FROM procrastinate_workers") >= count,
        120,
        f"{count} workers to register",
    )
    return workers


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()


def completions(n: int) -> float:
    """Seconds from a batch defer of ``n`` no-op jobs until all have succeeded."""
    from bench._jobs_tasks import noop

    done_sql = (
        "SELECT count(*) FROM procrastinate_jobs "
        "WHERE status = 'succeeded' AND queue_name = 'bench'"
    )
    t0 = time.perf_counter()
    noop.batch_defer(*({"i": i} for i in range(n)))
    _wait(lambda: _count(done_sql) >= n, 600, f"{n} jobs to complete")
    return time.perf_counter() - t0


def _upload_client(slug: str):
    """An API client of the owner of a new organization ``slug``, and a case of it."""
    from cases.tests.factories import CaseFactory
    from tenancy.context import tenant_context
    from tenancy.models import Organization
    from tenancy.testing import bearer_client
    from tenancy.tests.factories import member_of

    organization = Organization.objects.create(name=slug, slug=slug, plan_tier="enterprise")
    with tenant_context(organization):
        user = member_of(organization, email=f"owner@{slug}.test")
        case = CaseFactory(organization=organization)
    return bearer_client(user), case


def uploads(count: int, content: bytes) -> dict[str, tuple[list[float], list[dict]]]:
    """Upload ``content`` ``count`` times per variant through the API, the two variants
    interleaved (so both see the same machine, workers busy or not): ``"worker"`` (as now:
    the job is deferred) and ``"in request"`` (as before: an ``on_commit`` callback runs
    ``document_process`` in the request, before the response). Returns, per variant, the
    latencies in ms and the response bodies."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction

    from cases import services

    clients = {"worker": _upload_client("bench-jobs-worker")}
    clients["in request"] = _upload_client("bench-jobs-inline")
    real_defer = services.defer_processing

    def process_in_request(*, organization, document_id):
        transaction.on_commit(
            lambda: services.document_process(organization=organization, document_id=document_id)
        )

    results: dict[str, tuple[list[float], list[dict]]] = {name: ([], []) for name in clients}
    try:
        for i in range(count):
            for name, (client, case) in clients.items():
                services.defer_processing = (
                    process_in_request if name == "in request" else real_defer
                )
                upload = SimpleUploadedFile(f"brief-{i}.pdf", content, "application/pdf")
                t0 = time.perf_counter()
                response = client.post(
                    "/api/v1/documents/", {"case": str(case.pk), "file": upload}, format="multipart"
                )
                results[name][0].append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 201, response.content
                results[name][1].append(response.json())
    finally:
        services.defer_processing = real_defer
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 jobs and 40 uploads")
    parser.add_argument("--jobs", type=int, help="jobs per figure (default 5,000; quick 500)")
    parser.add_argument("--uploads", type=int, help="uploads per variant (default 200; quick 40)")
    parser.add_argument("--pages", type=int, default=30, help="pages of the uploaded PDF")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    n_jobs, n_uploads = args.jobs or size["jobs"], args.uploads or size["uploads"]

    import psycopg

    server = _base_url()
    dbname = (urlsplit(server).path.lstrip("/") or "goldleaves") + "_bench_jobs"
    admin = _libpq(_with_database(server, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    media = tempfile.mkdtemp(prefix="bench-jobs-media-")
    env = {
        **bench_env(),
        "DATABASE_URL": _with_database(server, dbname),
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "MEDIA_ROOT": media,
        "LOG_LEVEL": "WARNING",
        "BILLING_METERING_ENABLED": "true",
        "ALLOWED_HOSTS": "testserver",  # Django's test client
    }
    workers: list[subprocess.Popen] = []
    section = Section(
        "jobs",
        params={"jobs": n_jobs, "uploads": n_uploads, "pdf_pages": args.pages, "workers": 2},
    )
    try:
        print(f"jobs benchmark: {n_jobs:,} jobs, {n_uploads} uploads per variant, db {dbname}")
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if migrate.returncode != 0:
            sys.exit(f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        os.environ.update(env)
        import django

        django.setup()

        floor_rate = n_jobs / floor_inserts(n_jobs, _libpq(env["DATABASE_URL"]))
        defer_rate = n_jobs / defers(n_jobs)
        from django.db import connection

        with connection.cursor() as cursor:  # the deferral pass's jobs: not for the workers
            cursor.execute("DELETE FROM procrastinate_jobs WHERE queue_name = 'bench'")
        workers = start_workers(env)
        complete_rate = n_jobs / completions(n_jobs)
        done = _count(
            "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'bench' "
            "AND status = 'succeeded'"
        )
        section.check("every job succeeded", done == n_jobs, f"{done:,} of {n_jobs:,}")

        content = pdf_bytes(args.pages)
        results = uploads(n_uploads, content)
        (worker_ms, worker_bodies), (inline_ms, inline_bodies) = (
            results["worker"],
            results["in request"],
        )
        processed_sql = (
            "SELECT count(*) FROM cases_document WHERE id = ANY(%s::uuid[]) "
            "AND processing_status = 'processed'"
        )
        inline_ids = [b["id"] for b in inline_bodies]
        section.check(
            "processing in the request: processed when the response came",
            _count(processed_sql, [inline_ids]) == n_uploads,
            f"{_count(processed_sql, [inline_ids])} of {n_uploads} (its 201 still said pending)",
        )
        section.check(
            "processing in a worker answers pending",
            all(b["processing_status"] == "pending" for b in worker_bodies),
            f"{sum(b['processing_status'] == 'pending' for b in worker_bodies)} of {n_uploads}",
        )
        ids = [b["id"] for b in worker_bodies]
        _wait(lambda: _count(processed_sql, [ids]) == n_uploads, 300, "the workers' processing")
        processed = _count(processed_sql, [ids])
        section.check(
            "the workers processed every upload",
            processed == n_uploads,
            f"{processed} of {n_uploads}",
        )
    finally:
        stop_workers(workers)
        if not args.keep:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    floor = "plain INSERT of the same row into a copy of procrastinate_jobs, 1 per transaction"
    section.add(
        "jobs deferred/s (no-op task, 1 per transaction)",
        defer_rate,
        "jobs/s",
        floor,
        floor_rate,
    )
    section.add(
        "jobs completed/s by 2 worker processes (no-op task)",
        complete_rate,
        "jobs/s",
        floor,
        floor_rate,
    )
    p50_worker, p50_inline = percentile(worker_ms, 50), percentile(inline_ms, 50)
    section.add(
        f"upload p50, processing in a worker ({args.pages}-page PDF)",
        p50_worker,
        "ms",
        "upload p50, processing in the request (on_commit, as before)",
        p50_inline,
        note=f"p95 {percentile(worker_ms, 95):.1f} ms vs {percentile(inline_ms, 95):.1f} ms",
    )
    print(
        f"  upload p95: {percentile(worker_ms, 95):.1f} ms (worker) vs "
        f"{percentile(inline_ms, 95):.1f} ms (in the request)"
    )
    section.save()
    return 1 if section.failed else 0


if __name__ == "__main__":
    sys.exit(main())
