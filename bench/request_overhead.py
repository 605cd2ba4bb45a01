"""What metering costs per request: the real server, metering off / on / drf-api-tracking.

Runs gunicorn (same worker count and worker class for every variant) on the
configured PostgreSQL, seeds an organization with 1,000 cases, and drives an
authenticated ``GET /api/v1/cases/?page_size=20`` and ``POST /api/v1/cases/``
from another process at fixed concurrency for a fixed duration. Variants,
interleaved round by round (the order rotates each round):

  a  metering off   BILLING_METERING_ENABLED=false
  b  metering on    BILLING_METERING_ENABLED=true (the UsageMiddleware)
  c  peer           metering off, the cases view logged by drf-api-tracking
                    (``bench.peer``: its LoggingMixin writes one row per request)

Prints requests/s, p50 and p99 latency (ms), peak worker RSS (MiB) and the
ratios b/a and c/a (medians over rounds), and checks after each run that the
rows written equal the requests the server answered (from its access log):
billing_events rows == successful (2xx) billable requests for b, no
billing_events for a and c, one drf-api-tracking row per request for c.

The size of billing_events matters: each metered request inserts into it (six
indexes, random UUID primary key), and on a table of millions of rows whose
indexes exceed shared_buffers that insert costs far more than on an empty one.
The row count at start is printed and stored (``billing_events_rows_at_start``);
``make bench`` runs this script before bench/usage_summary.py, so the first run
on a fresh database sees an empty table and later runs see the 10M events.

Load generator: ``wrk`` (Debian package ``wrk``) when it is on PATH, else a
built-in asyncio HTTP/1.1 client (stdlib only); ``--client`` chooses.
Usage: ``python bench/request_overhead.py [--quick] [--client auto|wrk|python]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, Section, bench_env, median, percentile, setup_django  # noqa: E402

ORG_SLUG = "bench-overhead"
CASES = 1_000
HOST = "127.0.0.1"
VARIANTS = {
    "a": {"label": "metering off", "metering": "false", "settings": "goldleaves.settings"},
    "b": {"label": "metering on", "metering": "true", "settings": "goldleaves.settings"},
    "c": {"label": "drf-api-tracking", "metering": "false", "settings": "bench.peer.settings"},
}
TRACKING_TABLE = "rest_framework_tracking_apirequestlog"


# --- fixtures ----------------------------------------------------------------------------
def seed() -> dict:
    """The benchmark organization (idempotent on its slug): owner, one client, 1,000 cases.

    Returns ``{"org_id", "client_id", "token"}``; the token is a real access token
    signed with this process's SECRET_KEY (the server gets the same environment).
    """
    from cases.models import Case, Client
    from tenancy.models import Membership, Organization, User
    from tenancy.serializers import OrganizationTokenObtainPairSerializer

    org, _ = Organization.objects.get_or_create(
        slug=ORG_SLUG, defaults={"name": "Bench Overhead LLP", "plan_tier": "enterprise"}
    )
    user, created = User.objects.get_or_create(
        email="bench-overhead@bench.test", defaults={"organization": org}
    )
    if created:
        user.set_unusable_password()
        user.save()
    Membership.objects.get_or_create(organization=org, user=user, defaults={"role": "owner"})
    client, _ = Client.objects.get_or_create(organization=org, name="Bench Client")
    cleanup(org.pk)
    have = Case.objects.filter(organization=org).count()
    if have < CASES:
        Case.objects.bulk_create(
            Case(
                organization=org,
                client=client,
                title=f"Seeded matter {i}",
                reference_number=f"S-{i:05d}",
            )
            for i in range(have, CASES)
        )
    token = OrganizationTokenObtainPairSerializer.get_token(user).access_token
    token["org"] = str(org.pk)
    return {"org_id": str(org.pk), "client_id": str(client.pk), "token": str(token)}


def cleanup(org_id) -> None:
    """Remove what a run wrote (POSTed cases), so every run starts from the same 1,000 cases,
    then VACUUM (ANALYZE) the cases table: each run deletes thousands of POSTed cases, and
    their dead rows made the GET's count and page slower run after run (the baseline
    drifted from 134 to 87 req/s over a few runs). VACUUM needs the owner role."""
    from django.db import connection

    from tenancy.rls.roles import owner_connection

    with connection.cursor() as cur:
        cur.execute(
            "DELETE FROM cases_case WHERE organization_id = %s AND reference_number LIKE 'B-%%'",
            [org_id],
        )
    with owner_connection(), connection.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) cases_case")


def count_rows(org_id) -> dict:
    """Rows written so far by metering (billing_events) and by the peer (its request log)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM billing_events WHERE organization_id = %s", [org_id])
        billing = cur.fetchone()[0]
        cur.execute(f"SELECT count(*) FROM {TRACKING_TABLE} WHERE path LIKE '/api/v1/cases/%%'")
        tracking = cur.fetchone()[0]
    return {"billing": billing, "tracking": tracking}


# --- server ------------------------------------------------------------------------------
class Server:
    """A gunicorn master with ``workers`` sync workers, its access log, and an RSS sampler."""

    def __init__(self, variant: str, *, port: int, workers: int, logdir: Path):
        self.variant, self.port, self.workers = variant, port, workers
        self.access_log = logdir / f"access-{variant}-{uuid.uuid4().hex[:6]}.log"
        self.error_log = logdir / f"error-{variant}.log"
        self.peak_rss = 0
        self._sampling = False

    def start(self) -> None:
        spec = VARIANTS[self.variant]
        env = bench_env()
        env.update(
            BILLING_METERING_ENABLED=spec["metering"],
            DJANGO_SETTINGS_MODULE=spec["settings"],
            PYTHONPATH=str(ROOT),
        )
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "goldleaves.wsgi:application",
            "--workers",
            str(self.workers),
            "--worker-class",
            "sync",
            "--bind",
            f"{HOST}:{self.port}",
            "--backlog",
            "256",
            "--access-logfile",
            str(self.access_log),
            "--access-logformat",
            "%(s)s %(m)s %(U)s",
            "--error-logfile",
            str(self.error_log),
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early; see {self.error_log}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health/", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError(
                f"gunicorn did not answer /health/ within 60 s; see {self.error_log}"
            )

    def worker_rss(self) -> list[int]:
        import psutil

        try:
            return [c.memory_info().rss for c in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []

    def sample(self):
        """Context manager: sample worker RSS every 0.2 s while the block runs."""
        server = self

        class _Sampler:
            def __enter__(self):
                server._sampling = True
                self.thread = threading.Thread(target=self.run, daemon=True)
                self.thread.start()

            def run(self):
                while server._sampling:
                    server.peak_rss = max([server.peak_rss, *server.worker_rss()])
                    time.sleep(0.2)

            def __exit__(self, *exc):
                server._sampling = False
                self.thread.join()

        return _Sampler()

    def log_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- load generators ---------------------------------------------------------------------
_WRK_LUA = """
wrk.method = "{method}"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
local n = 0
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end
function request()
  if wrk.method == "GET" then return wrk.format() end
  n = n + 1
  local body = string.format(
    '{{"client": "{client_id}", "title": "Bench matter", "reference_number": "B-{tag}-%d-%d"}}',
    tid, n)
  return wrk.format(nil, nil, nil, body)
end
"""


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, method: str, *, fx: dict, concurrency: int, duration: float) -> dict:
    """Drive ``url`` with wrk (one thread, ``concurrency`` connections) and parse its report."""
    tag = uuid.uuid4().hex[:8]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_LUA.format(method=method, tag=tag, **fx))
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{int(duration)}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                fh.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(fh.name)
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    if not total or "50" not in pct or "99" not in pct:  # nothing completed: say so, keep going
        print(f"  wrk: no latency figures in its report:\n{out}", file=sys.stderr)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _wrk_ms(pct["50"]) if "50" in pct else float("nan"),
        "p99_ms": _wrk_ms(pct["99"]) if "99" in pct else float("nan"),
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


async def _python_load(url: str, method: str, *, fx: dict, concurrency: int, duration: float):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + duration

    def build(worker: int, n: int) -> bytes:
        body = b""
        if method == "POST":
            body = json.dumps(
                {
                    "client": fx["client_id"],
                    "title": "Bench matter",
                    "reference_number": f"B-{tag}-{worker}-{n}",
                }
            ).encode()
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {fx['token']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    async def worker(i: int):
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            raw = build(i, n)
            t0 = time.perf_counter()
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(raw)
            await writer.drain()
            data = await reader.read()
            writer.close()
            latencies.append((time.perf_counter() - t0) * 1000.0)
            status = int(data.split(b" ", 2)[1]) if data else 0
            statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "requests": len(latencies),
        "non_2xx": sum(v for k, v in statuses.items() if not 200 <= k < 300),
        "socket_errors": "",
    }


def run_python(url: str, method: str, **kw) -> dict:
    """Drive ``url`` with the built-in asyncio client (in a child process, so that the
    client never shares this process's interpreter or GIL with anything else)."""
    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]);"
        "from bench.request_overhead import _python_load;"
        "a = json.loads(sys.argv[2]);"
        "print(json.dumps(asyncio.run(_python_load(a['url'], a['method'], **a['kw']))))"
    )
    arg = json.dumps({"url": url, "method": method, "kw": kw})
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), arg], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


# --- the benchmark -----------------------------------------------------------------------
def measure(server: Server, client: str, fx: dict, *, concurrency: int, duration: float) -> dict:
    """Warm up, then GET and POST for ``duration`` seconds each; returns figures and checks."""
    load = run_wrk if client == "wrk" else run_python
    base = f"http://{HOST}:{server.port}/api/v1/cases/"
    endpoints = {"GET": base + "?page_size=20", "POST": base}
    load(endpoints["GET"], "GET", fx=fx, concurrency=concurrency, duration=2)  # warm-up
    time.sleep(0.5)
    results = {}
    for method, url in endpoints.items():
        before_rows, before_log = count_rows(fx["org_id"]), len(server.log_lines())
        with server.sample():
            figures = load(url, method, fx=fx, concurrency=concurrency, duration=duration)
        time.sleep(0.5)  # let requests in flight at the end finish and reach the access log
        after_rows = count_rows(fx["org_id"])
        lines = [line.split() for line in server.log_lines()[before_log:]]
        served = [ln for ln in lines if len(ln) == 3 and ln[2].startswith("/api/v1/")]
        figures["served"] = len(served)
        figures["served_2xx"] = sum(1 for ln in served if ln[0].startswith("2"))
        figures["billing_rows"] = after_rows["billing"] - before_rows["billing"]
        figures["tracking_rows"] = after_rows["tracking"] - before_rows["tracking"]
        results[method] = figures
        cleanup(fx["org_id"])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s per figure")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per figure (default 15; quick 5)")
    parser.add_argument("--concurrency", type=int, default=4, help="connections (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", 8301)))
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (5.0 if args.quick else 15.0)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH (apt-get install wrk), use --client python")

    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    subprocess.run(  # the peer's table (bench settings only)
        [sys.executable, "-m", "django", "migrate", "rest_framework_tracking", "-v0"],
        cwd=ROOT,
        env={
            **bench_env(),
            "DJANGO_SETTINGS_MODULE": "bench.peer.settings",
            "PYTHONPATH": str(ROOT),
        },
        check=True,
    )
    fx = seed()
    from django.db import connection

    with connection.cursor() as cur:  # what each metered request inserts into
        # The planner's estimate; -1 until the table was first vacuumed or analysed
        # (e.g. right after bench/usage_summary.py's bulk load): then count exactly.
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'billing_events'")
        billing_rows = cur.fetchone()[0]
        if billing_rows < 0:
            cur.execute("SELECT count(*) FROM billing_events")
            billing_rows = cur.fetchone()[0]
    section = Section(
        "request_overhead",
        params={
            "client": client,
            "concurrency": args.concurrency,
            "duration_s": duration,
            "rounds": rounds,
            "gunicorn_workers": args.workers,
            "worker_class": "sync",
            "cases_seeded": CASES,
            "billing_events_rows_at_start": billing_rows,
        },
    )
    print(
        f"request_overhead: {rounds} round(s) x 3 variants x GET/POST, {duration:.0f} s each, "
        f"c={args.concurrency}, {args.workers} sync workers, load by {client}; "
        f"billing_events holds ~{billing_rows:,} rows",
        file=sys.stderr,
    )
    per: dict = {v: {"GET": [], "POST": [], "rss": []} for v in VARIANTS}
    order = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="bench-gunicorn-") as logdir:
        for r in range(rounds):
            for variant in order[r % 3 :] + order[: r % 3]:
                server = Server(variant, port=args.port, workers=args.workers, logdir=Path(logdir))
                server.start()
                try:
                    res = measure(
                        server, client, fx, concurrency=args.concurrency, duration=duration
                    )
                finally:
                    server.stop()
                per[variant]["rss"].append(server.peak_rss)
                for method in ("GET", "POST"):
                    f = res[method]
                    per[variant][method].append(f)
                    print(
                        f"  round {r + 1} {variant} ({VARIANTS[variant]['label']}) {method}: "
                        f"{f['rps']:.0f} req/s p50 {f['p50_ms']:.1f} ms p99 {f['p99_ms']:.1f} ms"
                        f" served {f['served']} (2xx {f['served_2xx']}) billing rows "
                        f"{f['billing_rows']} tracking rows {f['tracking_rows']}",
                        file=sys.stderr,
                    )
                    _checks(section, variant, method, r, f)

    def med(variant, method, key):
        return median([f[key] for f in per[variant][method]])

    for method in ("GET", "POST"):
        what = "GET /api/v1/cases/?page_size=20" if method == "GET" else "POST /api/v1/cases/"
        a_rps, a_p50 = med("a", method, "rps"), med("a", method, "p50_ms")
        section.add(f"{what} req/s, metering off (a)", a_rps, "req/s")
        section.add(f"{what} p50, metering off (a)", a_p50, "ms")
        section.add(f"{what} p99, metering off (a)", med("a", method, "p99_ms"), "ms")
        b_rps, c_rps = med("b", method, "rps"), med("c", method, "rps")
        section.add(
            f"{what} req/s, metering on (b)",
            b_rps,
            "req/s",
            "metering off (a)",
            a_rps,
            target=">= 0.90",
            met=b_rps / a_rps >= 0.90,
        )
        b_p50 = med("b", method, "p50_ms")
        section.add(
            f"{what} p50, metering on (b)",
            b_p50,
            "ms",
            "metering off (a)",
            a_p50,
            target="<= 1.10",
            met=b_p50 / a_p50 <= 1.10,
        )
        section.add(
            f"{what} p99, metering on (b)",
            med("b", method, "p99_ms"),
            "ms",
            "metering off (a)",
            med("a", method, "p99_ms"),
        )
        section.add(
            f"{what} req/s, drf-api-tracking (c)", c_rps, "req/s", "metering off (a)", a_rps
        )
        section.add(
            f"{what} p50, drf-api-tracking (c)",
            med("c", method, "p50_ms"),
            "ms",
            "metering off (a)",
            a_p50,
        )
        section.add(
            f"{what} p99, drf-api-tracking (c)",
            med("c", method, "p99_ms"),
            "ms",
            "metering off (a)",
            med("a", method, "p99_ms"),
        )
        section.add(
            f"{what} throughput kept, metering (b/a) vs drf-api-tracking (c/a)",
            b_rps / a_rps,
            "x",
            "drf-api-tracking c/a",
            c_rps / a_rps,
            target="metering > peer",
            met=b_rps > c_rps,
        )
    mib = 1024 * 1024
    for variant in VARIANTS:
        peak = max(per[variant]["rss"]) / mib
        section.add(
            f"peak gunicorn worker RSS, {VARIANTS[variant]['label']} ({variant})",
            peak,
            "MiB",
            target="< 150 MiB",
            met=peak < 150,
        )
    section.save()
    return 1 if section.failed else 0


def _checks(section: Section, variant: str, method: str, r: int, f: dict) -> None:
    name = f"round {r + 1} {variant} {method}"
    if variant == "b":
        section.check(
            f"{name}: billing_events rows == successful billable requests",
            f["billing_rows"] == f["served_2xx"],
            f"{f['billing_rows']} rows, {f['served_2xx']} 2xx of {f['served']} served",
        )
    else:
        section.check(
            f"{name}: no billing_events with metering off",
            f["billing_rows"] == 0,
            f"{f['billing_rows']} rows",
        )
    if variant == "c":
        section.check(
            f"{name}: one drf-api-tracking row per request",
            f["tracking_rows"] == f["served"],
            f"{f['tracking_rows']} rows, {f['served']} served",
        )
    section.check(
        f"{name}: every response 2xx",
        f["served_2xx"] == f["served"] and f["non_2xx"] == 0,
        f"{f['served'] - f['served_2xx']} non-2xx in the access log, {f['non_2xx']} at the client",
    )


if __name__ == "__main__":
    sys.exit(main())
