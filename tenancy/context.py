"""The tenant context: which organization the current code acts for.

Two places hold it, and ``tenant_context`` sets both:

1. ``current_organization_var``, a ``contextvars.ContextVar`` read by Python code
   (querysets, services, metering). It is reset in ``finally``, so it never
   outlives the block, whatever the block raised. No ``threading.local``.
2. The PostgreSQL setting ``app.current_org`` (and ``app.rls_enabled``), read by
   row-level-security policies. It is set with ``set_config(name, value, true)``:
   per the PostgreSQL manual (9.28.1, "Configuration Settings Functions"), with
   ``is_local`` true "the new value will only apply during the current
   transaction". So the block runs in a transaction, the setting is made at its
   start (before any savepoint, so a savepoint rollback inside cannot undo it),
   and it dies with the transaction on commit, rollback or error: it cannot
   survive on a persistent connection, in a pool, or behind PgBouncer in
   transaction mode.
"""

import contextlib
import contextvars

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

current_organization_var: contextvars.ContextVar = contextvars.ContextVar(
    "current_organization", default=None
)

_SET_SQL = "SELECT set_config('app.current_org', %s, true), set_config('app.rls_enabled', %s, true)"


class NoTenantError(RuntimeError):
    """Raised when tenant-scoped code runs with no organization in context."""


def get_current_organization():
    """The ``Organization`` of the active tenant context, or ``None``."""
    return current_organization_var.get()


def require_current_organization():
    """The active ``Organization``; raises ``NoTenantError`` if there is none."""
    organization = current_organization_var.get()
    if organization is None:
        raise NoTenantError("No organization in the tenant context.")
    return organization


def set_connection_tenant(organization_id, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Set ``app.current_org`` (and ``app.rls_enabled``) for the current transaction only.

    Args:
        organization_id: a UUID (or ``None`` to clear: stored as ``''``).
    Raises:
        django.db.transaction.TransactionManagementError: not inside ``transaction.atomic``
            (outside a transaction the setting would last only for one statement).
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            "set_connection_tenant() needs an open transaction (transaction.atomic)."
        )
    value = "" if organization_id is None else str(organization_id)
    with connection.cursor() as cursor:
        cursor.execute(_SET_SQL, [value, "on" if settings.RLS_ENABLED else "off"])


@contextlib.contextmanager
def bind_organization(organization):
    """Set the context variable to ``organization`` for the block only (no database I/O).

    For callers that have already set the connection's tenant in their own
    transaction (``TenantMiddleware``); everyone else uses ``tenant_context``.
    """
    token = current_organization_var.set(organization)
    try:
        yield organization
    finally:
        current_organization_var.reset(token)


@contextlib.contextmanager
def tenant_context(organization, *, using: str = DEFAULT_DB_ALIAS):
    """Run the block as ``organization`` (an ``Organization``), in a transaction.

    Opens ``transaction.atomic(using=using)``, sets the context variable and the
    transaction-local ``app.current_org``, and on exit resets both. When called
    inside an outer transaction (the atomic block is then a savepoint, whose
    release would keep the setting) the previous organization's setting is
    restored on exit.

    Yields:
        the organization.
    Raises:
        whatever the block raises; the transaction (or savepoint) is rolled back.
    """
    previous = current_organization_var.get()
    with bind_organization(organization):
        with transaction.atomic(using=using):
            set_connection_tenant(organization.pk, using=using)
            yield organization
        if connections[using].in_atomic_block:
            set_connection_tenant(getattr(previous, "pk", None), using=using)
