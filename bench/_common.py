"""Shared plumbing of the benchmarks: Django set-up, timing helpers, the results table and JSON.

Benchmarks print figures; they assert nothing about time. Each script records its
figures as rows ``{figure, value, unit, baseline, baseline_value, ratio, target, met}``
in its own section of ``bench/results/latest.json`` (git-ignored), so scripts can
run alone or through ``bench/run.py`` and the file always holds the latest figure
of each.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "latest.json"

#: A secret for benchmark processes when none is configured (the server and the
#: token minting must share it). Never used outside bench/.
BENCH_SECRET_KEY = "bench-only-secret-key-not-for-production-0123456789"


def bench_env() -> dict[str, str]:
    """The environment every benchmark process uses: the caller's, plus a secret
    and DEBUG=false (benchmarks measure production settings), plus long-lived tokens."""
    env = dict(os.environ)
    env.setdefault("SECRET_KEY", BENCH_SECRET_KEY)
    env["DEBUG"] = "false"
    env.setdefault("JWT_ACCESS_LIFETIME_MINUTES", "240")
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def setup_django(settings_module: str = "goldleaves.settings") -> None:
    """Make the repository importable and configure Django in this process."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.update({k: v for k, v in bench_env().items() if k not in os.environ or k == "DEBUG"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    import django

    django.setup()


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) of ``values`` by linear interpolation (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Progress:
    """Prints ``label: i/n (rate/s)`` at most once a second, to stderr."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= 1.0 or done >= self.total:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            print(f"  {self.label}: {done:,}/{self.total:,} ({rate:,.0f}/s)", file=sys.stderr)


@dataclass
class Row:
    """One figure beside its baseline. ``ratio`` is value / baseline_value when both exist."""

    figure: str
    value: float | None
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def __post_init__(self):
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


@dataclass
class Section:
    """The figures of one benchmark script, with the parameters that produced them."""

    name: str
    params: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def check(self, name: str, ok: bool, detail: str) -> None:
        """A correctness check (not timing): printed, stored, and failing the script's exit code."""
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  check {'OK  ' if ok else 'FAIL'} {name}: {detail}", file=sys.stderr)

    @property
    def failed(self) -> bool:
        return any(not c["ok"] for c in self.checks)

    def save(self) -> None:
        """Merge this section into ``bench/results/latest.json`` and print its table."""
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        data = load_results()
        data.setdefault("sections", {})[self.name] = {
            "params": self.params,
            "rows": [asdict(r) for r in self.rows],
            "checks": self.checks,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        data["machine"] = machine_info()
        RESULTS.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print_table({self.name: data["sections"][self.name]})
        print(f"\nwritten: {RESULTS.relative_to(ROOT)} (section {self.name!r})")


def load_results() -> dict:
    try:
        return json.loads(RESULTS.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def machine_info() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        load1, load5, _ = os.getloadavg()
        info["loadavg_1m_at_save"] = round(load1, 2)
    except OSError:
        pass
    return info


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.2f}"
    else:
        text = f"{value:,}"
    return f"{text} {unit}".strip()


def print_table(sections: dict) -> None:
    """Print every figure of ``sections`` (as stored in latest.json) as a fixed-width table."""
    header = ("section", "figure", "value", "baseline", "baseline value", "ratio", "target", "met")
    lines = [header]
    for name, section in sections.items():
        for r in section.get("rows", []):
            met = {True: "yes", False: "NO", None: ""}[r.get("met")]
            lines.append(
                (
                    name,
                    r.get("figure", "?"),
                    _fmt(r.get("value"), r.get("unit", "")),
                    r.get("baseline", ""),
                    _fmt(r.get("baseline_value"), r.get("unit", ""))
                    if r.get("baseline_value") is not None
                    else "-",
                    f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-",
                    r.get("target", ""),
                    met,
                )
            )
        for c in section.get("checks", []):
            lines.append(
                (name, f"check: {c['check']}", "ok" if c["ok"] else "FAIL", "", "", "", "", "")
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    for i, line in enumerate(lines):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
