"""Start-up configuration, checked in subprocesses with a controlled environment."""

import json
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


def _settings_json(expr: str, env_extra: dict, tmp_path) -> dict:
    """Start Django in a subprocess with ``env_extra`` (and no env file; a ``None`` value
    unsets that variable) and return the JSON of ``expr`` evaluated there (``settings``,
    ``storages`` (Django's storage handler) and ``sys`` are in scope)."""
    code = (
        "import json, sys, django; django.setup(); from django.conf import settings; "
        "from django.core.files.storage import storages; "
        f"print(json.dumps({expr}))"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
        "SECRET_KEY": "x" * 50,
        "GOLDLEAVES_ENV_FILE": str(tmp_path / "no-such.env"),
        **env_extra,
    }
    env = {k: v for k, v in env.items() if v is not None}
    result = _run(["-c", code], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_missing_secret_key_with_debug_off_is_a_clear_startup_error(tmp_path):
    # No env file (GOLDLEAVES_ENV_FILE points at a missing one), no SECRET_KEY, no DEBUG.
    result = _run(
        ["-c", "import django; django.setup()"],
        {
            "DJANGO_SETTINGS_MODULE": "goldleaves.settings",
            "GOLDLEAVES_ENV_FILE": str(tmp_path / "no-such.env"),
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        },
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set and DEBUG is false" in result.stderr


def test_debug_defaults_to_false(tmp_path):
    # The repository's .env (make run writes one with DEBUG=true) is not read.
    debug = _settings_json(
        "settings.DEBUG", {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}, tmp_path
    )
    assert debug is False


def test_goldleaves_env_file_is_the_env_file_read(tmp_path):
    env_file = tmp_path / "custom.env"
    env_file.write_text("DEBUG=true\nUSAGE_RATE_CENTS=7\n")
    values = _settings_json(
        "[settings.DEBUG, settings.USAGE_RATE_CENTS, str(settings.ENV_FILE)]",
        {
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
            "GOLDLEAVES_ENV_FILE": str(env_file),
        },
        tmp_path,
    )
    assert values == [True, 7, str(env_file)]


def test_database_url_is_parsed_and_the_embedded_server_is_not_started(tmp_path):
    embedded_dir = tmp_path / "embedded"
    db, modules = _settings_json(
        "[{k: settings.DATABASES['default'][k] for k in "
        "('ENGINE', 'HOST', 'PORT', 'NAME', 'USER', 'PASSWORD')}, "
        "[m for m in ('goldleaves.embedded_db', 'pgserver') if m in sys.modules]]",
        {
            "DATABASE_URL": "postgres://u:p@db.example:5999/x",
            "EMBEDDED_DB_DIR": str(embedded_dir),
        },
        tmp_path,
    )
    assert db == {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "db.example",
        "PORT": 5999,
        "NAME": "x",
        "USER": "u",
        "PASSWORD": "p",
    }
    assert modules == []  # neither the embedded-database module nor pgserver was imported
    assert not embedded_dir.exists()


def test_s3_bucket_selects_the_s3_storage_backend(tmp_path):
    storage = _settings_json(
        "[settings.STORAGES['default']['BACKEND'], "
        "type(storages['default']).__module__ + '.' + type(storages['default']).__name__, "
        "storages['default'].bucket_name, storages['default'].region_name, "
        "'boto3' in sys.modules]",
        {
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
            "S3_BUCKET": "goldleaves-docs",
            "S3_REGION": "eu-west-1",
        },
        tmp_path,
    )
    assert storage == [
        "storages.backends.s3.S3Storage",
        "storages.backends.s3.S3Storage",
        "goldleaves-docs",
        "eu-west-1",
        True,  # the backend imported boto3 (django-storages[s3] installed it)
    ]


def test_without_s3_bucket_documents_are_local_files(tmp_path):
    backend = _settings_json(
        "settings.STORAGES['default']['BACKEND']",
        {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "S3_BUCKET": ""},
        tmp_path,
    )
    assert backend == "django.core.files.storage.FileSystemStorage"


def test_env_example_lists_every_setting_read_from_the_environment():
    import re

    read = set(
        re.findall(
            r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "goldleaves/settings.py").read_text()
        )
    )
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert {"TEST_DATABASE_NAME", "GOLDLEAVES_ENV_FILE", "SECRET_KEY", "DATABASE_URL"} <= read
    assert sorted(read - set(listed)) == []
    # each key has its one-line comment right above it
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("# "), line


def test_make_env_writes_a_development_env_once(tmp_path):
    target = tmp_path / ".env"
    first = _run(["scripts/make_env.py", str(target)], {})
    assert first.returncode == 0, first.stderr
    assert f"Created {target}" in first.stdout
    values = dict(
        line.split("=", 1)
        for line in target.read_text().splitlines()
        if line and not line.startswith("#")
    )
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert values["DEBUG"] == "true"
    assert len(values["SECRET_KEY"]) >= 50
    assert set(values) == set(example)  # every key of .env.example, nothing else
    assert {k: v for k, v in values.items() if k not in ("DEBUG", "SECRET_KEY")} == {
        k: v for k, v in example.items() if k not in ("DEBUG", "SECRET_KEY")
    }
    # The generated file alone starts Django, with DEBUG on and the generated secret.
    started = _settings_json(
        "[settings.DEBUG, settings.SECRET_KEY]",
        {
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
            "GOLDLEAVES_ENV_FILE": str(target),
            "SECRET_KEY": None,
        },
        tmp_path,
    )
    assert started == [True, values["SECRET_KEY"]]
    other = tmp_path / "other.env"
    assert _run(["scripts/make_env.py", str(other)], {}).returncode == 0
    assert other.read_text() != target.read_text()  # a fresh secret each time

    target.write_text("SECRET_KEY=mine\nDEBUG=false\n")
    again = _run(["scripts/make_env.py", str(target)], {})
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert target.read_text() == "SECRET_KEY=mine\nDEBUG=false\n"


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
