"""Benchmark: ``manage.py backfill_organizations`` on generated users, beside a baseline.

    python bench/backfill.py            # 1,000,000 users
    python bench/backfill.py --quick    # 20,000 users
    python bench/backfill.py --users 200000 --batch-size 10000 --keep

Self-contained: creates its own database ``<name of DATABASE_URL's db>_bench_backfill``
on the same server (the embedded one without DATABASE_URL), migrates it, generates the
users with one ``INSERT ... SELECT generate_series`` (70% at firm domains, ~50 colleagues
each; 25% at public mail domains; 5% already assigned), runs the real command in a
subprocess (as the app role, like production), and reports users/s.

Baseline: a single set-based ``UPDATE`` over the same rows -- the organizations already
exist, so it only joins each user to its organization by key and sets
``organization_id``: the floor any backfill pays, without creating organizations or
memberships, without batching (one long lock), without progress or resumability.

Prints the figures and records them (section ``backfill``) in
``bench/results/latest.json``. Times are wall clock, on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
PUBLIC = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com"]
#: Keep in step with tenancy.backfill.PUBLIC_MAIL_DOMAINS (a superset is harmless here:
#: the generated users only use PUBLIC).
PUBLIC_ALL = PUBLIC

BASELINE_SQL = """
UPDATE tenancy_user u SET organization_id = o.id
FROM tenancy_organization o
WHERE u.organization_id IS NULL
  AND o.backfill_key = CASE WHEN lower(split_part(u.email, '@', 2)) = ANY(%(public)s)
                            THEN 'email:' || lower(u.email)
                            ELSE 'domain:' || lower(split_part(u.email, '@', 2)) END
"""

GENERATE_SQL = """
INSERT INTO tenancy_user (password, is_superuser, email, full_name, is_active, is_staff,
                          date_joined, organization_id)
SELECT '', false,
       CASE WHEN g %% 20 < 14 THEN 'lawyer' || g || '@firm' || (g / 50) || '-law.com'
            WHEN g %% 20 < 19 THEN 'person' || g || '@' || (%(public)s::text[])[1 + g %% 5]
            ELSE 'assigned' || g || '@assigned.test' END,
       '', true, false, now(),
       CASE WHEN g %% 20 = 19 THEN %(assigned_org)s::uuid END
FROM generate_series(1, %(n)s) AS g
"""


def base_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url:
        return url
    sys.path.insert(0, str(ROOT))
    from goldleaves.embedded_db import embedded_database_url

    return embedded_database_url(ROOT / ".data")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name)))


def libpq(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def record(section: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {"sections": {}}
    if RESULTS.exists():
        try:
            data = json.loads(RESULTS.read_text())
        except ValueError:
            pass
    data.setdefault("sections", {})["backfill"] = section
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 users instead of 1,000,000")
    parser.add_argument("--users", type=int, default=None, help="number of users to generate")
    parser.add_argument("--batch-size", type=int, default=5000, help="backfill batch size")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    n = args.users or (20_000 if args.quick else 1_000_000)

    import psycopg

    server = base_url()
    dbname = (urlsplit(server).path.lstrip("/") or "goldleaves") + "_bench_backfill"
    admin = libpq(with_database(server, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = with_database(server, dbname)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DEBUG": "false",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-secret-key-0123456789abcdef",
        "LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    try:
        print(f"backfill benchmark: {n:,} users, batch size {args.batch_size}, db {dbname}")
        run([python, "manage.py", "migrate", "--noinput", "-v0"], env)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            assigned_org = conn.execute(
                "INSERT INTO tenancy_organization (id, name, slug, plan_tier, stripe_customer_id,"
                " billing_timezone, created_at) VALUES (gen_random_uuid(), 'Assigned', "
                "'assigned', 'starter', '', 'UTC', now()) RETURNING id"
            ).fetchone()[0]
            t0 = time.perf_counter()
            conn.execute(GENERATE_SQL, {"n": n, "public": PUBLIC, "assigned_org": assigned_org})
            conn.execute("ANALYZE")
            print(f"  generated {n:,} users in {time.perf_counter() - t0:.1f}s")
            todo = conn.execute(
                "SELECT count(*) FROM tenancy_user WHERE organization_id IS NULL"
            ).fetchone()[0]

        t0 = time.perf_counter()
        out = run(
            [python, "manage.py", "backfill_organizations", "--batch-size", str(args.batch_size)],
            env,
        ).stdout
        wall_s = time.perf_counter() - t0
        done_line = out.strip().splitlines()[-1]
        print("  " + done_line)
        # the command's own clock (batches only), not Python/Django start-up
        backfill_s = float(re.search(r"batch\(es\), ([0-9.]+)s", done_line).group(1))

        with psycopg.connect(libpq(url), autocommit=True) as conn:
            left = conn.execute(
                "SELECT count(*) FROM tenancy_user WHERE organization_id IS NULL"
            ).fetchone()[0]
            orgs, members = conn.execute(
                "SELECT (SELECT count(*) FROM tenancy_organization),"
                " (SELECT count(*) FROM tenancy_membership)"
            ).fetchone()
            assert left == 0, f"{left} users left without an organization"
            # Baseline: same rows back to NULL (not timed), then ONE set-based UPDATE.
            conn.execute(
                "UPDATE tenancy_user SET organization_id = NULL WHERE email NOT LIKE 'assigned%%'"
            )
            conn.execute("VACUUM ANALYZE tenancy_user")
            t0 = time.perf_counter()
            updated = conn.execute(BASELINE_SQL, {"public": PUBLIC_ALL}).rowcount
            baseline_s = time.perf_counter() - t0
            assert updated == todo, (updated, todo)
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    rate, base_rate = todo / backfill_s, todo / baseline_s
    rows = [
        {
            "figure": f"backfill_organizations users/s ({todo:,} users, batch {args.batch_size})",
            "value": rate,
            "unit": "users/s",
            "baseline": "single set-based UPDATE over the same rows (organizations pre-created)",
            "baseline_value": base_rate,
            "ratio": rate / base_rate,
            "target": "",
            "met": None,
            "note": f"{orgs:,} organizations, {members:,} memberships created; "
            f"{backfill_s:.1f}s vs {baseline_s:.1f}s",
        }
    ]
    print(f"\n  {'figure':<58} {'value':>12}")
    print(f"  {'backfill_organizations (users/s)':<58} {rate:>12,.0f}")
    print(f"  {'baseline: one set-based UPDATE (users/s)':<58} {base_rate:>12,.0f}")
    print(f"  {'ratio backfill / baseline':<58} {rate / base_rate:>12.3f}")
    print(f"  users {todo:,}; organizations {orgs:,}; memberships {members:,}")
    print(
        f"  backfill {backfill_s:.1f}s (wall incl. start-up {wall_s:.1f}s); "
        f"baseline UPDATE {baseline_s:.1f}s"
    )
    record(
        {
            "params": {"users": n, "to_backfill": todo, "batch_size": args.batch_size},
            "rows": rows,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )


if __name__ == "__main__":
    main()
