"""Where a metered GET's extra CPU goes under load: the gunicorn workers, PostgreSQL, the
kernel.

The set-up of bench/request_overhead.py (its organization, gunicorn with 2 sync workers,
wrk with 4 connections on ``GET /api/v1/cases/?page_size=20``), metering off (a) and on
(b), ``--pairs`` alternating pairs of ``--duration`` seconds. Around each run it reads the
CPU time (user + system, psutil) of the gunicorn workers and of every PostgreSQL process,
and the machine's ``/proc/stat`` (all CPUs busy, and kernel time), and prints each in ms
per request served, then the medians of a and b. On a machine the load saturates (the
workers, PostgreSQL and wrk share the cores), the difference of the machine's busy time
is what throughput loses to metering.

Needs wrk and Linux (``/proc/stat``). Not part of ``make bench`` (a breakdown, not a
figure of record). Usage: ``python bench/_metering_cpu.py [--pairs N] [--duration S]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import request_overhead as overhead  # noqa: E402
from bench._common import setup_django  # noqa: E402
from bench._load import HOST, Load, Server, runner  # noqa: E402

#: ``/proc/stat`` counts in clock ticks.
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(processes) -> float:
    """User + system CPU seconds of ``processes`` (psutil), those still alive."""
    import psutil

    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def machine_ticks() -> list[int]:
    """The first line of ``/proc/stat``: user, nice, system, idle, iowait, irq, softirq..."""
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def one_run(server: Server, fx: dict, load, duration: float) -> dict:
    """Warm up, then one timed run: req/s and CPU ms per request served, by group."""
    import psutil

    url = f"http://{HOST}:{server.port}/api/v1/cases/?page_size=20"
    load(Load(url, "GET", fx, 4, duration=2))
    groups = {
        "gunicorn workers": psutil.Process(server.proc.pid).children(),
        "postgres": [
            p
            for p in psutil.process_iter(["name"])
            if (p.info["name"] or "").startswith("postgres")
        ],
    }
    before = {name: cpu_seconds(procs) for name, procs in groups.items()}
    ticks0, served0 = machine_ticks(), len(server.log_lines())
    figures = load(Load(url, "GET", fx, 4, duration, mode="plain", tag=uuid.uuid4().hex[:8]))
    after = {name: cpu_seconds(procs) for name, procs in groups.items()}
    ticks1 = machine_ticks()
    time.sleep(0.3)  # the last requests reach the access log
    served = len(server.log_lines()) - served0
    delta = [b - a for a, b in zip(ticks0, ticks1, strict=False)]
    row = {"req/s": figures["rps"]}
    for name in groups:
        row[name] = (after[name] - before[name]) * 1000 / served
    busy = sum(delta) - delta[3] - delta[4]  # not idle, not iowait
    row["machine busy"] = busy * TICK_S * 1000 / served
    row["machine kernel"] = (delta[2] + delta[5] + delta[6]) * TICK_S * 1000 / served
    overhead.cleanup(fx["org_id"])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="alternating a/b pairs (4)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (8)")
    parser.add_argument("--port", type=int, default=8311)
    args = parser.parse_args(argv)
    setup_django()
    fx = overhead.seed()
    load = runner("wrk")
    rows: dict[str, list[dict]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as logdir:
        for pair in range(args.pairs):
            for variant in ("a", "b") if pair % 2 == 0 else ("b", "a"):
                server = overhead.variant_server(
                    variant, port=args.port, workers=2, logdir=Path(logdir)
                )
                server.start()
                try:
                    row = one_run(server, fx, load, args.duration)
                finally:
                    server.stop()
                rows[variant].append(row)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items())
                label = overhead.VARIANTS[variant]["label"]
                print(f"pair {pair + 1} {variant} ({label}): {shown}", flush=True)
    print("\nmedians, CPU ms per request (req/s as is):")
    for name in rows["a"][0]:
        a = statistics.median(r[name] for r in rows["a"])
        b = statistics.median(r[name] for r in rows["b"])
        print(f"  {name:<18} off {a:8.3f}  on {b:8.3f}  on - off {b - a:+8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
