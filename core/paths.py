"""Paths inside the application, for the prefix rules of the middleware.

Every rule that looks at a request's path (``API_ROUTES``, ``BILLABLE_ROUTES``,
``BILLING_EXCLUDED_PATHS``, the admin's and the token endpoints' paths, the JSON errors
under ``/api/``) compares ``request.path_info``: the path the URLconf routes (PEP 3333,
``PATH_INFO`` is what follows ``SCRIPT_NAME``). Never ``request.path``, which is
``SCRIPT_NAME + PATH_INFO``: ``SCRIPT_NAME`` can come from the client (gunicorn takes it
from a ``SCRIPT_NAME`` request header sent from an address in ``forwarded_allow_ips``,
127.0.0.1 by default; gunicorn docs, "Settings: forwarder_headers"), and with
``request.path`` a request sent as ``SCRIPT_NAME: /x`` to ``/x/api/v1/cases/`` was
routed and served as ``/api/v1/cases/`` while no prefix rule matched it: not billed, not
rate-limited, its ``Idempotency-Key`` ignored, its write allowed on a canceled
subscription. A deployment under a real script prefix is metered the same way.
"""

from django.urls import get_script_prefix


def app_path(url: str) -> str:
    """``url``, a path from ``django.urls.reverse`` (which puts the current request's
    script prefix in front), as a path inside the application that compares with
    ``request.path_info``: ``"/x/api/v1/auth/token/"`` -> ``"/api/v1/auth/token/"`` under
    the script prefix ``/x/``; unchanged without one."""
    prefix = get_script_prefix()
    if prefix != "/" and url.startswith(prefix):
        return "/" + url[len(prefix) :]
    return url
