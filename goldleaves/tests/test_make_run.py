"""``make run`` alone serves the API AND processes uploads in the background, on the
embedded database, and Ctrl-C stops both processes: the README's tour, for real."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the virtualenv the suite runs in

pytestmark = [pytest.mark.live, pytest.mark.worker]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str, **kwargs):
    try:
        return requests.get(url, timeout=5, **kwargs)
    except requests.RequestException:
        return None


def test_make_run_serves_the_api_and_a_worker_that_processes_uploads(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "SECRET_KEY": "x" * 50,
        "DATABASE_URL": "",  # the embedded PostgreSQL, in a fresh folder
        "EMBEDDED_DB_DIR": str(tmp_path / "data"),
        "MEDIA_ROOT": str(tmp_path / "media"),
        "GOLDLEAVES_ENV_FILE": str(tmp_path / "no.env"),
        "REDIS_URL": "",
    }
    log_path = tmp_path / "make-run.log"
    log = log_path.open("w")  # read back through its own handle (offsets are not shared)
    # -o: treat .env and the virtualenv as up to date (a test must not write .env into the
    # repository; the suite already runs in the installed virtualenv).
    make = subprocess.Popen(
        ["make", "-o", ".env", "-o", f"{VENV}/.installed", "run", f"PORT={port}", f"VENV={VENV}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )

    def output() -> str:
        return log_path.read_text()

    try:
        _wait_for(lambda: _get(f"{base}/health/"), 600, f"the API on {base}: {output()}")
        assert "Stripe is off (STRIPE_API_KEY is not set)" in output()  # and the rest works
        assert "Starting worker on all queues" in _wait_for(
            lambda: "Starting worker" in output() and output(), 60, "the worker"
        )
        # The README tour: token, client, case, then upload a document.
        token = requests.post(
            f"{base}/api/v1/auth/token/",
            json={"email": "owner@demo.test", "password": "demo-password-123"},
            timeout=10,
        ).json()["access"]
        auth = {"Authorization": f"Bearer {token}"}
        client = requests.post(
            f"{base}/api/v1/clients/", json={"name": "Jane Roe"}, headers=auth, timeout=10
        ).json()
        case = requests.post(
            f"{base}/api/v1/cases/",
            json={"client": client["id"], "title": "Roe v. Wade", "reference_number": "GL-1"},
            headers=auth,
            timeout=10,
        ).json()
        uploaded = requests.post(
            f"{base}/api/v1/documents/",
            data={"case": case["id"]},
            files={"file": ("brief.txt", b"Facts\fArgument\fConclusion\n", "text/plain")},
            headers=auth,
            timeout=10,
        )
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["processing_status"] == "pending"
        url = f"{base}/api/v1/documents/{uploaded.json()['id']}/"
        document = _wait_for(
            lambda: (
                (r := _get(url, headers=auth))
                and r.json()["processing_status"] != "pending"
                and r.json()
            ),
            60,
            "the worker to process the upload",
        )
        assert (document["processing_status"], document["page_count"]) == ("processed", 3)
        pids = [int(p) for p in re.findall(r"(?:web|worker)\.1 started \(pid=(\d+)\)", output())]
        assert len(pids) == 2, output()

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal
        make.wait(timeout=60)
        text = output()
        assert "Stopped worker on all queues" in text  # a graceful stop
        hint = "keeps running after Ctrl-C, so the next start is quick; `make stop` stops it"
        assert text.index("Stopped worker on all queues") < text.index(hint)  # said on exit
        for pid in pids:
            _wait_for(lambda pid=pid: not _alive(pid), 30, f"process {pid} to stop")
        assert _get(f"{base}/health/") is None  # the API is gone too
    finally:
        log.close()
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import pgserver, sys; pgserver.get_server(sys.argv[1], cleanup_mode='stop')",
                str(tmp_path / "data" / "pg"),
            ],
            env=env,
            timeout=120,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
