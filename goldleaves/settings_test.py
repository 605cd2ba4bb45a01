"""Settings for the test suite: the real settings, with a test-only secret when none is set
and a fast password hasher. Everything else (PostgreSQL, Redis, RLS) is as configured."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")

from goldleaves.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
