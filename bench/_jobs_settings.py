"""Settings of bench/jobs.py (its own process and its worker processes): the project's,
plus the benchmark's no-op task (``bench._jobs_tasks``). Bench only."""

from goldleaves.settings import *  # noqa: F403
from goldleaves.settings import PROCRASTINATE_IMPORT_PATHS

PROCRASTINATE_IMPORT_PATHS = [*PROCRASTINATE_IMPORT_PATHS, "bench._jobs_tasks"]
