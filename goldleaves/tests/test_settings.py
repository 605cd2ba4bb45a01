"""Start-up configuration, checked in subprocesses with a controlled environment."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, env_extra, cwd=ROOT, timeout=180):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_missing_secret_key_with_debug_off_is_a_clear_startup_error(tmp_path):
    # An empty .env-free working copy is simulated by pointing at the real settings
    # with no SECRET_KEY and DEBUG=false in the environment (a .env file, if any,
    # does not override variables that are set).
    result = _run(
        ["-c", "import django; django.setup()"],
        {
            "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
            "SECRET_KEY": "",
            "DEBUG": "false",
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        },
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set and DEBUG is false" in result.stderr


def test_debug_defaults_to_false():
    result = _run(
        [
            "-c",
            "import django; django.setup(); "
            "from django.conf import settings; print(settings.DEBUG)",
        ],
        {
            "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
            "SECRET_KEY": "x" * 50,
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        },
        cwd=ROOT,
    )
    # A developer's .env may set DEBUG; only assert the default when there is none.
    if not (ROOT / ".env").exists():
        assert result.stdout.strip() == "False", result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_make_run_setup_path_on_the_embedded_database(tmp_path):
    """``make run``'s set-up (migrate + setup_demo) on an embedded PostgreSQL started from
    pgserver in an empty folder, with no DATABASE_URL: what a fresh machine does."""
    env = {
        "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
        "SECRET_KEY": "x" * 50,
        "DATABASE_URL": "",
        "EMBEDDED_DB_DIR": str(tmp_path / "data"),
    }
    migrate = _run(["manage.py", "migrate", "--noinput"], env)
    assert migrate.returncode == 0, migrate.stderr
    assert "Applying tenancy.0001_initial... OK" in migrate.stdout
    first = _run(["manage.py", "setup_demo"], env)
    assert first.returncode == 0, first.stderr
    assert "Demo organization created" in first.stdout
    assert "email=owner@demo.test" in first.stdout
    second = _run(["manage.py", "setup_demo"], env)
    assert "Demo organization exists" in second.stdout
    where = _run(
        [
            "-c",
            "import django; django.setup(); from django.db import connection; "
            "connection.ensure_connection(); "
            "print(connection.connection.info.host)",
        ],
        env,
    )
    # the connection goes to the Unix socket of the server under our data folder
    assert where.stdout.strip().startswith(str(tmp_path / "data")), where.stderr
    # Stop the server this test started (pgserver stops it when the last handle closes).
    stop = _run(
        [
            "-c",
            "import pgserver, sys; pgserver.get_server(sys.argv[1], cleanup_mode='stop')",
            str(tmp_path / "data" / "pg"),
        ],
        {},
    )
    assert stop.returncode == 0, stop.stderr
