"""The tenant context: which organization the current code acts for.

There is no ambient Python-side organization (no context variable, no thread-local).
Code names its organization explicitly:

* In a request, ``TenantMiddleware`` resolves the organization and attaches it to the
  request; ``request_organization(request)`` is the one way to read it (views use
  ``TenantAPIMixin.organization``, serializers ``context["organization"]``, services
  take ``organization=`` as a keyword argument).
* Outside a request (commands, jobs), code opens ``tenant_context(organization)`` and
  passes the same organization on to the services it calls.

The database holds the one ambient copy, for row-level security: the PostgreSQL setting
``app.current_org`` (and ``app.rls_enabled``), read by the policies. It is set with
``set_config(name, value, true)``: per the PostgreSQL manual (9.28.1, "Configuration
Settings Functions",
https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADMIN-SET), with
``is_local`` true "the new value will only apply during the current transaction". So the
block runs in a transaction, the setting is made at its start (before any savepoint, so a
savepoint rollback inside cannot undo it), and it dies with the transaction on commit,
rollback or error: it cannot survive on a persistent connection, in a pool, or behind
PgBouncer in transaction mode.
"""

import contextlib

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

_SETTINGS = ("app.current_org", "app.rls_enabled", "app.current_user", "app.cross_tenant")


def request_organization(request):
    """The ``Organization`` that ``TenantMiddleware`` resolved for ``request``, or ``None``.

    The one way to read a request's organization. ``request`` is a Django ``HttpRequest``
    or a DRF ``Request`` (read through to the ``HttpRequest`` it wraps). ``None`` when the
    request has no organization: no bearer token (health, docs, token endpoints), a
    request the middleware did not see (``APIRequestFactory``), or drf-spectacular's
    schema introspection.
    """
    django_request = getattr(request, "_request", request)
    return getattr(django_request, "organization", None)


def _require_atomic(connection, what: str) -> None:
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            f"{what} needs an open transaction (transaction.atomic)."
        )


def _set_local(connection, values: dict[str, str]) -> None:
    """``set_config(name, value, true)`` for each item, in one statement."""
    sql = "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in values)
    params = [p for item in values.items() for p in item]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def set_connection_tenant(organization_id, *, user_id=None, using: str = DEFAULT_DB_ALIAS) -> None:
    """Set ``app.current_org``, ``app.current_user`` and ``app.rls_enabled`` for the current
    transaction only (``app.cross_tenant`` is cleared).

    Args:
        organization_id: a UUID (or ``None`` to clear: stored as ``''``).
        user_id: the acting user's id (int) or ``None``; memberships of that user are
            readable in every organization (their own ``GET /organizations/`` list).
    Raises:
        django.db.transaction.TransactionManagementError: not inside ``transaction.atomic``
            (outside a transaction the setting would last only for one statement).
    """
    connection = connections[using]
    _require_atomic(connection, "set_connection_tenant()")
    _set_local(
        connection,
        {
            "app.current_org": "" if organization_id is None else str(organization_id),
            "app.current_user": "" if user_id is None else str(user_id),
            "app.rls_enabled": "on" if settings.RLS_ENABLED else "off",
            "app.cross_tenant": "",
        },
    )


@contextlib.contextmanager
def connection_settings_restored(*, using: str = DEFAULT_DB_ALIAS):
    """Inside an outer transaction, put the ``app.*`` settings back as they were on exit.

    A nested ``transaction.atomic`` is a savepoint; releasing it keeps a
    ``set_config(..., true)`` made inside until the OUTER transaction ends. When the
    block is the outermost transaction nothing needs restoring (it dies with it), so
    this costs a query only when nested. The caller opens its ``atomic`` inside this.
    """
    connection = connections[using]
    previous = None
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT " + ", ".join("current_setting(%s, true)" for _ in _SETTINGS),
                list(_SETTINGS),
            )
            previous = dict(zip(_SETTINGS, cursor.fetchone(), strict=True))
    try:
        yield
    finally:
        if previous is not None and connection.in_atomic_block and not connection.needs_rollback:
            _set_local(connection, {k: v or "" for k, v in previous.items()})


@contextlib.contextmanager
def user_context(user, *, using: str = DEFAULT_DB_ALIAS):
    """Run the block in a transaction with no organization but ``app.current_user`` set to
    ``user.pk``: row-level security then admits that user's own memberships (in every
    organization) and no other tenant row. For the token endpoint, which picks a default
    organization before one is in context."""
    with connection_settings_restored(using=using), transaction.atomic(using=using):
        set_connection_tenant(None, user_id=user.pk, using=using)
        yield


@contextlib.contextmanager
def cross_tenant(*, reason: str = "", using: str = DEFAULT_DB_ALIAS):
    """THE explicit cross-tenant path: run the block in a transaction where row-level
    security admits every organization's rows (``app.cross_tenant = 'on'``, transaction-local).

    For staff and operator work only. Its uses (grep ``cross_tenant(`` to audit them): the
    Django admin (``AdminCrossTenantMiddleware``), ``backfill_organizations`` (one batch
    writes memberships of many organizations), ``process_documents`` (finds pending
    documents of every organization, then processes each in its own ``tenant_context``),
    the staff-only billing pipeline health endpoint (``billing.apis``), and test set-up.
    Never in a request handler of the tenant API. ``onboard_tenant`` does not use it: it
    writes the new organization's owner membership inside that organization's own
    ``tenant_context``.

    Args:
        reason: free text for readers and logs (what the cross-tenant access is for).
    Raises:
        whatever the block raises; the transaction (or savepoint) is rolled back.
    """
    connection = connections[using]
    with connection_settings_restored(using=using), transaction.atomic(using=using):
        _set_local(connection, {"app.cross_tenant": "on"})
        yield


@contextlib.contextmanager
def tenant_context(organization, *, using: str = DEFAULT_DB_ALIAS):
    """Run the block as ``organization`` (an ``Organization``), in a transaction.

    Opens ``transaction.atomic(using=using)`` and sets the transaction-local
    ``app.current_org``, which dies with the transaction. When called inside an outer
    transaction (the atomic block is then a savepoint, whose release would keep the
    setting) the previous organization's setting is restored on exit. The block passes
    ``organization`` on explicitly (services take it as a keyword argument); nothing in
    Python reads it back from an ambient variable.

    Yields:
        the organization.
    Raises:
        whatever the block raises; the transaction (or savepoint) is rolled back.
    """
    with connection_settings_restored(using=using), transaction.atomic(using=using):
        set_connection_tenant(organization.pk, using=using)
        yield organization
