"""``make stop``, ``make clean-data``, ``make superuser``, the hint of ``make run`` and the
``/`` redirect: a real embedded PostgreSQL (pgserver) in a fresh folder, stopped for real."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from goldleaves.embedded_db import _alive, embedded_server_pid

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def make(*args, env_extra=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(env_extra or {})
    return subprocess.run(
        ["make", "-s", *args, f"PYTHON={sys.executable}", f"VENV={VENV}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.live
def test_clean_data_refuses_while_the_server_runs_and_stop_stops_it(tmp_path):
    data = tmp_path / "data"
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from goldleaves.embedded_db import embedded_database_url as u; "
            "print(u(sys.argv[1]))",
            str(data),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr
    pid = embedded_server_pid(data)
    assert pid is not None  # outlived the process that started it (cleanup_mode=None)
    try:
        refused = make("clean-data", f"DATA_DIR={data}")
        assert refused.returncode != 0
        assert "refusing to delete its data under a live server" in refused.stderr
        assert (data / "pg" / "PG_VERSION").exists()

        stopped = make("stop", f"DATA_DIR={data}")
        assert stopped.returncode == 0, stopped.stderr
        assert f"Stopping the embedded PostgreSQL ({data}/pg, pid {pid}) ..." in stopped.stdout
        assert "Stopped." in stopped.stdout
        assert embedded_server_pid(data) is None
        assert not _alive(pid)

        again = make("stop", env_extra={"EMBEDDED_DB_DIR": str(data)})
        assert again.returncode == 0
        assert "is not running; nothing to stop" in again.stdout

        cleaned = make("clean-data", f"DATA_DIR={data}")
        assert cleaned.returncode == 0, cleaned.stderr
        assert not data.exists()
    finally:
        if embedded_server_pid(data):
            make("stop", f"DATA_DIR={data}")


def test_superuser_runs_createsuperuser_and_the_hint_is_silent_without_a_server(tmp_path):
    dry = make("-n", "superuser", "-o", ".env", "-o", f"{VENV}/.installed")
    assert dry.returncode == 0, dry.stderr
    assert f"{VENV}/bin/python manage.py createsuperuser" in dry.stdout.splitlines()
    printed = subprocess.run(
        [sys.executable, "scripts/embedded_db.py", "hint", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (printed.returncode, printed.stdout) == (
        0,
        "",
    )  # make run's exit line, see test_make_run


def test_the_root_redirects_to_the_api_docs(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/api/docs/"
