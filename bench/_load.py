"""The HTTP load of the benchmarks (bench/request_overhead.py, bench/growth.py): the
server under test (gunicorn, ``Server``) and the load generators.

``wrk`` (Debian package ``wrk``) when it is on PATH, else a built-in asyncio HTTP/1.1
client (stdlib only, run in a child process). Both drive one URL with ``concurrency``
connections for ``duration`` seconds (a ``Load``) and return the same figures:
``{"rps", "p50_ms", "p99_ms", "requests", "non_2xx", "socket_errors"}``. POSTs create
cases (``POST /api/v1/cases/``) with references ``B-<tag>-...``, in one of the
``POST_MODES``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench._common import ROOT, bench_env, percentile

_WRK_LUA = """
wrk.method = "{method}"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
local mode = "{mode}"
local n = 0
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end
local function keyed(key)
  local headers = {{}}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Idempotency-Key"] = key
  return headers
end
function request()
  if wrk.method == "GET" then return wrk.format() end
  n = n + 1
  if mode == "replay" then
    return wrk.format(nil, nil, keyed("{tag}-replay"),
      '{{"client": "{client_id}", "title": "Bench matter", "reference_number": "B-{tag}-r"}}')
  end
  local body = string.format(
    '{{"client": "{client_id}", "title": "Bench matter", "reference_number": "B-{tag}-%d-%d"}}',
    tid, n)
  if mode == "key" then
    return wrk.format(nil, nil, keyed(string.format("{tag}-%d-%d", tid, n)), body)
  end
  return wrk.format(nil, nil, nil, body)
end
"""

#: POST modes: ``plain`` (no key), ``key`` (a new Idempotency-Key per request: first
#: tries), ``replay`` (one key and body for every request: replays after the first).
POST_MODES = ("plain", "key", "replay")


@dataclass
class Load:
    """One load run: ``method`` on ``url`` with ``concurrency`` connections for
    ``duration`` seconds. ``fx``: ``{"token", "client_id", ...}`` (the bearer token, the
    client the POSTed cases belong to); ``mode``: see ``POST_MODES``; ``tag``: the
    prefix of the keys and references (default: a new one)."""

    url: str
    method: str
    fx: dict
    concurrency: int
    duration: float
    mode: str = "plain"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


def post_body(fx: dict, reference: str) -> bytes:
    """The JSON body of a benchmark ``POST /api/v1/cases/`` (as the Lua script builds it)."""
    return json.dumps(
        {"client": fx["client_id"], "title": "Bench matter", "reference_number": reference}
    ).encode()


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(load: Load) -> dict:
    """Drive the load with wrk (one thread, ``concurrency`` connections) and parse its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_LUA.format(method=load.method, tag=load.tag, mode=load.mode, **load.fx))
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{load.concurrency}",
                f"-d{int(load.duration)}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                fh.name,
                load.url,
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


async def python_load(load: Load) -> dict:
    """Drive the load with asyncio (one connection per request, ``Connection: close``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(load.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + load.duration

    def build(worker: int, n: int) -> bytes:
        body, key = b"", ""
        if load.method == "POST":
            replay = load.mode == "replay"
            reference = f"B-{load.tag}-r" if replay else f"B-{load.tag}-{worker}-{n}"
            body = post_body(load.fx, reference)
            if load.mode == "key":
                key = f"Idempotency-Key: {load.tag}-{worker}-{n}\r\n"
            elif replay:
                key = f"Idempotency-Key: {load.tag}-replay\r\n"
        head = (
            f"{load.method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {load.fx['token']}\r\nContent-Type: application/json\r\n"
            f"{key}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
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
    await asyncio.gather(*(worker(i) for i in range(load.concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "requests": len(latencies),
        "non_2xx": sum(v for k, v in statuses.items() if not 200 <= k < 300),
        "socket_errors": "",
    }


def run_python(load: Load) -> dict:
    """Drive the load with the built-in asyncio client (in a child process, so that the
    client never shares this process's interpreter or GIL with anything else)."""
    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]);"
        "from bench._load import Load, python_load;"
        "print(json.dumps(asyncio.run(python_load(Load(**json.loads(sys.argv[2]))))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), json.dumps(asdict(load))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def runner(client: str):
    """The load function of ``client`` (``wrk`` or ``python``): ``Load -> figures``."""
    return run_wrk if client == "wrk" else run_python


def prime_replay(url: str, fx: dict, tag: str) -> None:
    """Send the first try of the ``replay`` mode's request (its key and body, as the load
    generators build them) and check it created the case (201)."""
    request = urllib.request.Request(
        url,
        data=post_body(fx, f"B-{tag}-r"),
        method="POST",
        headers={
            "Authorization": f"Bearer {fx['token']}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"{tag}-replay",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status


# --- the server under load ----------------------------------------------------------------
HOST = "127.0.0.1"


class Server:
    """A gunicorn master with ``workers`` sync workers on ``HOST:port``, its access log
    (``status method path`` a line), and an RSS sampler. ``variant`` names it in the log
    files; ``env``: the settings of the variant (e.g. ``BILLING_METERING_ENABLED``,
    ``DJANGO_SETTINGS_MODULE``), over ``bench_env()``."""

    def __init__(self, variant: str, *, env: dict, port: int, workers: int, logdir: Path):
        self.variant, self.port, self.workers, self.env = variant, port, workers, env
        self.access_log = logdir / f"access-{variant}-{uuid.uuid4().hex[:6]}.log"
        self.error_log = logdir / f"error-{variant}.log"
        self.peak_rss = 0
        self._sampling = False

    def start(self) -> None:
        env = {**bench_env(), **self.env, "PYTHONPATH": str(ROOT)}
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
