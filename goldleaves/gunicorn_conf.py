"""gunicorn settings of ``make run`` (``Procfile.dev``'s ``web:`` line:
``gunicorn goldleaves.wsgi --config python:goldleaves.gunicorn_conf``).

``WEB_WORKERS`` processes of ``WEB_THREADS`` threads each (gunicorn's ``gthread`` worker:
gunicorn docs, "Settings: worker_class, threads"), read from the environment or the same
``.env`` Django reads (``GOLDLEAVES_ENV_FILE``). A thread is long-lived and keeps at most
one database connection (``CONN_MAX_AGE``), so the server holds at most
WEB_WORKERS x WEB_THREADS connections (2 x 16 = 32 by default), within the embedded
server's ``max_connections`` of 64 (``goldleaves/embedded_db.py``); with
``DATABASE_POOL_SIZE=N`` at most WEB_WORKERS x N. ``runserver`` opened a connection per
request thread instead, which ran out of connections under load.
"""

from pathlib import Path

import environ

_BASE_DIR = Path(__file__).resolve().parent.parent
_env = environ.Env()
environ.Env.read_env(
    Path(_env.str("GOLDLEAVES_ENV_FILE", default="") or _BASE_DIR / ".env"), overwrite=False
)

bind = _env.str("GOLDLEAVES_ADDR", default="") or "127.0.0.1:8000"  # make run: HOST:PORT
worker_class = "gthread"
workers = _env.int("WEB_WORKERS", default=2)
threads = _env.int("WEB_THREADS", default=16)
# Seconds a request may run before its worker is restarted, and a stop waits for requests.
timeout = 60
graceful_timeout = 10
errorlog = "-"
loglevel = _env.str("WEB_LOG_LEVEL", default="info")
