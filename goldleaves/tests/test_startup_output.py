"""What a process prints when it starts: no line twice, none unexplained."""

import os
import subprocess
import sys
from pathlib import Path

from tenancy.management.commands.migrate import enforcement_note

ROOT = Path(__file__).resolve().parents[2]


def _python(code_or_args, **env_extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    env.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_command_prints_no_periodic_registration_lines():
    result = _python(["manage.py", "check"])
    assert result.returncode == 0, result.stderr
    assert "Registering task" not in result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."


def test_a_django_log_line_is_printed_once_with_debug_on():
    result = _python(
        "import django; django.setup(); import logging; "
        "logging.getLogger('django.utils.autoreload').info('Watching for file changes with "
        "StatReloader')",
        DJANGO_SETTINGS_MODULE="goldleaves.settings",
        DEBUG="true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Watching for file changes") == 1, result.stderr


def test_the_worker_still_logs_its_periodic_deferrals():
    result = _python(
        "import django; django.setup(); import logging; "
        "logging.getLogger('procrastinate.periodic').info('Periodic job deferred', "
        "extra={'action': 'periodic_task_deferred'})",
        DJANGO_SETTINGS_MODULE="goldleaves.settings",
    )
    assert result.stderr.count("Periodic job deferred") == 1, result.stderr


def test_migrate_says_whether_row_level_security_is_enforced(settings):
    settings.RLS_ENABLED = True
    assert enforcement_note() == "enforced for requests and jobs (RLS_ENABLED=true)."
    settings.RLS_ENABLED = False
    assert enforcement_note().startswith("NOT enforced (RLS_ENABLED=false): requests and jobs")
