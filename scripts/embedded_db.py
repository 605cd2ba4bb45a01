"""The embedded PostgreSQL of development (``goldleaves.embedded_db``): status, stop, and the
guard of ``make clean-data``. Run by the Makefile; needs no Django settings (loading them
would start the server).

Usage: ``python scripts/embedded_db.py status|stop|require-stopped|hint [DATA_DIR]``

* ``status``: prints whether the server of the data directory is running; exit 0.
* ``stop``: stops it (fast shutdown) and waits; exit 0 (also when it was not running),
  1 when it could not be stopped.
* ``require-stopped``: exit 0 when it is not running, else 1 with a message (``make
  clean-data`` deletes nothing then).
* ``hint``: while it runs, one line on how to stop it (``make run`` prints it on exit).

The data directory is ``DATA_DIR`` if given, else ``$EMBEDDED_DB_DIR`` if set, else
``.data/`` beside ``manage.py`` (the server's files are in its ``pg/``).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from goldleaves.embedded_db import embedded_server_pid, stop_embedded_server  # noqa: E402

USAGE = "usage: embedded_db.py status|stop|require-stopped|hint [DATA_DIR]"


def data_root(given: str | None = None) -> Path:
    """``given``, else ``$EMBEDDED_DB_DIR``, else ``<repository>/.data``."""
    return Path(given or os.environ.get("EMBEDDED_DB_DIR") or ROOT / ".data")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(USAGE, file=sys.stderr)
        return 2
    command, root = argv[1], data_root(argv[2] if len(argv) == 3 else None)
    pid = embedded_server_pid(root)
    if command == "status":
        print(
            f"The embedded PostgreSQL ({root}/pg) is running (pid {pid})."
            if pid
            else f"The embedded PostgreSQL ({root}/pg) is not running."
        )
        return 0
    if command == "stop":
        if pid is None:
            print(f"The embedded PostgreSQL ({root}/pg) is not running; nothing to stop.")
            return 0
        print(f"Stopping the embedded PostgreSQL ({root}/pg, pid {pid}) ...")
        try:
            stop_embedded_server(root)
        except (TimeoutError, PermissionError) as exc:
            print(f"Could not stop it: {exc}", file=sys.stderr)
            return 1
        print("Stopped.")
        return 0
    if command == "require-stopped":
        if pid is None:
            return 0
        print(
            f"The embedded PostgreSQL is running on {root}/pg (pid {pid}): refusing to delete "
            "its data under a live server. Stop the server (make run: Ctrl-C) and the "
            "database (make stop) first.",
            file=sys.stderr,
        )
        return 1
    if command == "hint":
        if pid is not None:  # nothing to say with DATABASE_URL (no embedded server ran)
            print(
                f"The embedded PostgreSQL ({root}/pg, pid {pid}) keeps running after Ctrl-C, "
                "so the next start is quick; `make stop` stops it."
            )
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
