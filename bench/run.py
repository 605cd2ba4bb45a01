"""Run every benchmark, in a fixed order, and print one table of every figure.

Order: growth (grows billing_events to usage_summary's data set, measuring at a tenth of
it and at all of it, so that what follows runs on the full table), request_overhead,
ingest, usage_summary (re-uses that data set), backfill, jobs (the task queue), then any
other
``bench/*.py`` script in name order (names starting with ``_`` are helpers, not
scripts). Each runs in its own process (as it would alone) and merges its figures
into ``bench/results/latest.json``, which this runner starts afresh. ``--quick``
is passed on to every script. Exit status: non-zero if any script failed.
Usage: ``python bench/run.py [--quick] [--only name ...]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import BENCH_DIR, RESULTS, ROOT, load_results, print_table  # noqa: E402

#: growth first: it grows billing_events to the 10M-event data set (on a fresh database),
#: so that every later figure is measured on the full table.
ORDER = ["growth", "request_overhead", "ingest", "usage_summary", "backfill", "jobs"]
NOT_SCRIPTS = {"run", "__init__"}


def scripts() -> list[str]:
    present = {p.stem for p in BENCH_DIR.glob("*.py")} - NOT_SCRIPTS
    present = {name for name in present if not name.startswith("_")}
    return [n for n in ORDER if n in present] + sorted(present - set(ORDER))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 5 minutes in all)")
    parser.add_argument("--only", nargs="*", help="run only these scripts (names without .py)")
    args = parser.parse_args(argv)
    names = [n for n in scripts() if not args.only or n in args.only]
    RESULTS.unlink(missing_ok=True)
    failed, timings = [], {}
    started = time.perf_counter()
    for name in names:
        print(f"\n=== bench/{name}.py {'--quick' if args.quick else ''}".rstrip(), flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(BENCH_DIR / f"{name}.py")] + (["--quick"] if args.quick else [])
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        timings[name] = time.perf_counter() - t0
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    total = time.perf_counter() - started
    print("\n=== all figures" + (" (--quick)" if args.quick else ""))
    print_table(load_results().get("sections", {}))
    print("\n" + ", ".join(f"{n} {s:.0f} s" for n, s in timings.items()) + f"; total {total:.0f} s")
    print(f"results: {RESULTS.relative_to(ROOT)}")
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
