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
ratios b/a and c/a (medians over rounds; the throughput target, b/a >= 0.90, on the
median of each round's own b/a), and checks after each run that the
rows written equal the requests the server answered (from its access log):
billing_events rows == successful (2xx) billable requests for b, no
billing_events for a and c, one drf-api-tracking row per request for c.

With metering on (b) it also drives ``POST /api/v1/cases/`` with an
``Idempotency-Key``: a new key per request (the first try: the claim, the case, the
stored answer and the event), and one key and body repeated (the replay: the stored
answer, nothing run or billed), each beside plain POST. Checks: one event and one
stored key per first try; the replays (after one untimed first try) create, bill and
store nothing.

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
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, Section, bench_env, median, setup_django  # noqa: E402
from bench._load import HOST, Load, Server, prime_replay, runner  # noqa: E402

ORG_SLUG = "bench-overhead"
CASES = 1_000
VARIANTS = {
    "a": {"label": "metering off", "metering": "false", "settings": "goldleaves.settings"},
    "b": {"label": "metering on", "metering": "true", "settings": "goldleaves.settings"},
    "c": {"label": "drf-api-tracking", "metering": "false", "settings": "bench.peer.settings"},
}
TRACKING_TABLE = "rest_framework_tracking_apirequestlog"
#: (key in the load figures, unit, name in the table) of each figure of a run.
FIGURES = (("rps", "req/s", "req/s"), ("p50_ms", "ms", "p50"), ("p99_ms", "ms", "p99"))


def variant_server(variant: str, *, port: int, workers: int, logdir: Path) -> Server:
    """An unstarted gunicorn ``Server`` for ``variant`` ("a", "b" or "c" of ``VARIANTS``):
    its metering setting and settings module over ``bench_env()``, ``workers`` sync
    workers on ``port``, logs under ``logdir``."""
    spec = VARIANTS[variant]
    env = {"BILLING_METERING_ENABLED": spec["metering"], "DJANGO_SETTINGS_MODULE": spec["settings"]}
    return Server(variant, env=env, port=port, workers=workers, logdir=logdir)


# --- fixtures ----------------------------------------------------------------------------
def seed() -> dict:
    """The benchmark organization (idempotent on its slug): owner, one client, 1,000 cases.

    Returns ``{"org_id", "client_id", "token"}``; the token is a real access token
    signed with this process's SECRET_KEY (the server gets the same environment).
    """
    from cases.models import Case, Client
    from tenancy.context import tenant_context
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
    with tenant_context(org):  # tenant rows: in the organization's own context (RLS)
        Membership.objects.get_or_create(organization=org, user=user, defaults={"role": "owner"})
        client, _ = Client.objects.get_or_create(organization=org, name="Bench Client")
    cleanup(org.pk)
    with tenant_context(org):
        have = Case.objects.filter(organization=org).count()
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

    from tenancy.context import cross_tenant
    from tenancy.rls.roles import owner_connection

    with cross_tenant(reason="bench: cleanup"), connection.cursor() as cur:
        cur.execute(
            "DELETE FROM cases_case WHERE organization_id = %s AND reference_number LIKE 'B-%%'",
            [org_id],
        )
        cur.execute("DELETE FROM billing_idempotency_keys WHERE organization_id = %s", [org_id])
    with owner_connection(), connection.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) cases_case")


def count_rows(org_id) -> dict:
    """Rows written so far by metering (billing_events), by the peer (its request log), as
    stored Idempotency-Key answers, and cases POSTed by the benchmark (``B-...``). Read on
    the explicit cross-tenant path (the peer's request log is no tenant table)."""
    from django.db import connection

    from tenancy.context import cross_tenant

    with cross_tenant(reason="bench: rows written by the run"), connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM billing_events WHERE organization_id = %s", [org_id])
        billing = cur.fetchone()[0]
        cur.execute(f"SELECT count(*) FROM {TRACKING_TABLE} WHERE path LIKE '/api/v1/cases/%%'")
        tracking = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM billing_idempotency_keys WHERE organization_id = %s", [org_id]
        )
        keys = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM cases_case WHERE organization_id = %s "
            "AND reference_number LIKE 'B-%%'",
            [org_id],
        )
        cases = cur.fetchone()[0]
    return {"billing": billing, "tracking": tracking, "keys": keys, "cases": cases}


# --- the benchmark -----------------------------------------------------------------------
def measure(server: Server, client: str, fx: dict, *, concurrency: int, duration: float) -> dict:
    """Warm up, then GET and POST for ``duration`` seconds each; returns figures and checks."""
    load = runner(client)
    base = f"http://{HOST}:{server.port}/api/v1/cases/"
    runs = {"GET": ("GET", base + "?page_size=20", "plain"), "POST": ("POST", base, "plain")}
    if server.variant == "b":  # Idempotency-Key beside plain POST, metering on
        runs["POST key"] = ("POST", base, "key")
        runs["POST replay"] = ("POST", base, "replay")
    load(Load(runs["GET"][1], "GET", fx, concurrency, duration=2))  # warm-up
    time.sleep(0.5)
    results = {}
    for name, (method, url, mode) in runs.items():
        tag = uuid.uuid4().hex[:8]
        if mode == "replay":  # the first try, untimed: every timed request is a replay
            prime_replay(url, fx, tag)
        before_rows, before_log = count_rows(fx["org_id"]), len(server.log_lines())
        with server.sample():
            figures = load(Load(url, method, fx, concurrency, duration, mode=mode, tag=tag))
        time.sleep(0.5)  # let requests in flight at the end finish and reach the access log
        after_rows = count_rows(fx["org_id"])
        lines = [line.split() for line in server.log_lines()[before_log:]]
        served = [ln for ln in lines if len(ln) == 3 and ln[2].startswith("/api/v1/")]
        figures["served"] = len(served)
        figures["served_2xx"] = sum(1 for ln in served if ln[0].startswith("2"))
        figures["billing_rows"] = after_rows["billing"] - before_rows["billing"]
        figures["tracking_rows"] = after_rows["tracking"] - before_rows["tracking"]
        figures["key_rows"] = after_rows["keys"] - before_rows["keys"]
        figures["cases_created"] = after_rows["cases"]
        results[name] = figures
        cleanup(fx["org_id"])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s per figure")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per figure (default 10; quick 5)")
    parser.add_argument("--concurrency", type=int, default=4, help="connections (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", 8301)))
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (5.0 if args.quick else 10.0)
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
        f"request_overhead: {rounds} round(s) x 3 variants x GET/POST (b: also POST with "
        f"Idempotency-Key, first try and replay), {duration:.0f} s each, "
        f"c={args.concurrency}, {args.workers} sync workers, load by {client}; "
        f"billing_events holds ~{billing_rows:,} rows",
        file=sys.stderr,
    )
    per: dict = {v: {"GET": [], "POST": [], "rss": []} for v in VARIANTS}
    per["b"].update({"POST key": [], "POST replay": []})
    order = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="bench-gunicorn-") as logdir:
        for r in range(rounds):
            for variant in order[r % 3 :] + order[: r % 3]:
                server = variant_server(
                    variant, port=args.port, workers=args.workers, logdir=Path(logdir)
                )
                server.start()
                try:
                    res = measure(
                        server, client, fx, concurrency=args.concurrency, duration=duration
                    )
                finally:
                    server.stop()
                per[variant]["rss"].append(server.peak_rss)
                for method in res:
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
        section.add(f"{what} req/s, metering on (b)", b_rps, "req/s", "metering off (a)", a_rps)
        # The target is judged on each round's own ratio (b and a measured minutes apart, in
        # the same round), the median over the rounds: a slow spell of the machine then
        # moves one round's ratio, not the medians of b and a in different directions.
        rounds_ab = zip(per["a"][method], per["b"][method], strict=True)
        paired = median([fb["rps"] / fa["rps"] for fa, fb in rounds_ab])
        section.add(
            f"{what} throughput kept, metering on/off, median of the rounds' ratios",
            paired,
            "x",
            target=">= 0.90",
            met=paired >= 0.90,
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
        for variant, label in (("b", "metering on"), ("c", "drf-api-tracking")):
            if variant == "c":
                section.add(f"{what} req/s, {label} (c)", c_rps, "req/s", "metering off (a)", a_rps)
                section.add(
                    f"{what} p50, {label} (c)",
                    med("c", method, "p50_ms"),
                    "ms",
                    "metering off (a)",
                    a_p50,
                )
            section.add(
                f"{what} p99, {label} ({variant})",
                med(variant, method, "p99_ms"),
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
    post = "POST /api/v1/cases/"
    for mode, label in (("POST key", "first try"), ("POST replay", "replay")):
        what = f"{post} with Idempotency-Key, {label}, metering on"
        for key, unit, name in FIGURES:
            section.add(
                f"{what} {name}", med("b", mode, key), unit, "plain POST (b)", med("b", "POST", key)
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
    """The correctness checks of one run (rows written against requests served)."""
    served = f"{f['served_2xx']} 2xx of {f['served']} served"
    rows = f"{f['cases_created']} cases, {f['billing_rows']} events, {f['key_rows']} keys"
    if method == "POST replay":
        title = "the replays created, billed and stored nothing (one case, its first try)"
        ok = (f["cases_created"], f["billing_rows"], f["key_rows"]) == (1, 0, 0)
        checks = [(title, ok, f"{rows} for {served}")]
    elif method == "POST key":
        title = "one case, one event and one stored key per first try"
        ok = f["cases_created"] == f["billing_rows"] == f["key_rows"] == f["served_2xx"]
        checks = [(title, ok, f"{rows}, {served}")]
    elif variant == "b":
        title = "billing_events rows == successful billable requests"
        ok = f["billing_rows"] == f["served_2xx"]
        checks = [(title, ok, f"{f['billing_rows']} rows, {served}")]
    else:
        title = "no billing_events with metering off"
        checks = [(title, f["billing_rows"] == 0, f"{f['billing_rows']} rows")]
    if variant == "c":
        title, ok = "one drf-api-tracking row per request", f["tracking_rows"] == f["served"]
        checks.append((title, ok, f"{f['tracking_rows']} rows, {f['served']} served"))
    non_2xx = f"{f['served'] - f['served_2xx']} non-2xx in the access log"
    ok = f["served_2xx"] == f["served"] and f["non_2xx"] == 0
    checks.append(("every response 2xx", ok, f"{non_2xx}, {f['non_2xx']} at the client"))
    for title, ok, detail in checks:
        section.check(f"round {r + 1} {variant} {method}: {title}", ok, detail)


if __name__ == "__main__":
    sys.exit(main())
