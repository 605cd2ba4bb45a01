"""Where a metered GET's extra time goes: the INSERT, the WAL flush at COMMIT, Python.

In one process, through Django's test client and the whole middleware stack, on the
configured PostgreSQL (the benchmark organization of bench/request_overhead.py):
``GET /api/v1/cases/?page_size=20`` ``--requests`` times in each of three modes,
interleaved in blocks of 50:

* ``off``: metering off (``UsageMiddleware`` not loaded): the request's transaction
  only reads, so its COMMIT writes no WAL;
* ``on``: metering on: one ``event_insert_guarded`` round trip, and a COMMIT that waits
  for the WAL flush (``synchronous_commit = on``, PostgreSQL manual, 30.4 "Asynchronous
  Commit");
* ``on, async commit``: metering on with ``synchronous_commit = off`` for the session:
  the same INSERT, no wait for the flush at COMMIT.

Prints the mean ms per request of each mode and the differences: on - async is the
WAL flush wait, async - off the INSERT and the Python that builds the event; then a
cProfile of the metered mode splits that part into the INSERT round trip (time inside
``event_insert_guarded`` waiting on the server) and Python (``event_build`` and the
rest of ``UsageMiddleware``). Not part of ``make bench`` (a profile, not a figure of
record). Usage: ``python bench/_metering_profile.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import setup_django  # noqa: E402

URL = "/api/v1/cases/?page_size=20"
BLOCK = 50


def client(fx: dict, *, metering: bool):
    """A test client whose handler loads the middleware with metering on or off."""
    from django.conf import settings
    from django.test import Client

    settings.BILLING_METERING_ENABLED = metering
    c = Client(HTTP_AUTHORIZATION=f"Bearer {fx['token']}", HTTP_HOST="127.0.0.1")
    assert c.get(URL).status_code == 200  # loads the middleware now
    return c


def synchronous_commit(value: str) -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT set_config('synchronous_commit', %s, false)", [value])


def block(c, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        c.get(URL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="GETs per mode (default 500)")
    args = parser.parse_args(argv)
    setup_django()
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    from bench.request_overhead import cleanup, seed

    fx = seed()
    clients = {"off": client(fx, metering=False), "on": client(fx, metering=True)}
    spent = {"off": 0.0, "on": 0.0, "on, async commit": 0.0}
    for _ in range(max(args.requests // BLOCK, 1)):
        for mode in spent:
            synchronous_commit("off" if mode == "on, async commit" else "on")
            spent[mode] += block(clients["on" if mode.startswith("on") else "off"], BLOCK)
    synchronous_commit("on")
    n = max(args.requests // BLOCK, 1) * BLOCK
    ms = {mode: s / n * 1000.0 for mode, s in spent.items()}
    print(f"load average {os.getloadavg()[0]:.2f}; {n} GETs per mode, ms per request:")
    for mode, value in ms.items():
        print(f"  {mode:18} {value:7.2f}")
    print(f"  extra of metering  {ms['on'] - ms['off']:7.2f}")
    print(f"    WAL flush at COMMIT (on - async)       {ms['on'] - ms['on, async commit']:7.2f}")
    print(f"    INSERT + Python (async - off)          {ms['on, async commit'] - ms['off']:7.2f}")

    profile = cProfile.Profile()
    profile.enable()
    block(clients["on"], n)
    profile.disable()
    stats = pstats.Stats(profile)
    per = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        key = ("/".join(Path(filename).parts[-2:]), name)
        if key in {
            ("billing/middleware.py", "record"),
            ("billing/services.py", "event_insert_guarded"),
            ("billing/services.py", "event_build"),
            ("psycopg/connection.py", "commit"),
        }:
            per[key] = per.get(key, 0.0) + cumulative / n * 1000.0
    print("cProfile of the metered mode (ms per request, cumulative; profiled, so slower):")
    for (module, name), value in sorted(per.items()):
        print(f"  {module}:{name:24} {value:7.3f}")
    record = per.get(("billing/middleware.py", "record"), 0.0)
    insert = per.get(("billing/services.py", "event_insert_guarded"), 0.0)
    print(f"  UsageMiddleware.record without its INSERT (Python) {record - insert:7.3f}")
    cleanup(fx["org_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
