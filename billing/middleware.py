"""Usage middleware: meters billable requests (built by the metering issue)."""

from django.core.exceptions import MiddlewareNotUsed


class UsageMiddleware:
    """Placeholder position in the middleware list, last, after ``TenantMiddleware``.

    Metering is not built yet, so this removes itself at start-up.
    """

    def __init__(self, get_response):
        raise MiddlewareNotUsed("metering is not implemented yet")
