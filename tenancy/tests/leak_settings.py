"""Settings of the gunicorn server of the live leak tests (test-only URLconf/middleware)."""

from goldleaves.settings_test import *  # noqa: F403
from goldleaves.settings_test import MIDDLEWARE

ROOT_URLCONF = "tenancy.tests.leak_site"
DEBUG = False
MIDDLEWARE = ["tenancy.tests.leak_site.BackendPidMiddleware", *MIDDLEWARE]
MIDDLEWARE.insert(
    MIDDLEWARE.index("tenancy.middleware.TenantMiddleware") + 1,
    "tenancy.tests.leak_site.RaisingMiddleware",
)
