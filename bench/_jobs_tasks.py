"""The no-op task of bench/jobs.py (registered only under ``bench._jobs_settings``)."""

from procrastinate.contrib.django import app

#: The queue of the benchmark's jobs; only the benchmark's workers take it.
BENCH_QUEUE = "bench"


@app.task(name="bench.noop", queue=BENCH_QUEUE)
def noop(i: int) -> int:
    """Does nothing; returns ``i``. What a job costs the engine, and nothing else."""
    return i
