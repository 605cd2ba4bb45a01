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
``app.current_org`` (and ``app.rls_enabled``, ``app.current_user``, ``app.cross_tenant``),
read by the policies. It is set with ``SET LOCAL``: per the PostgreSQL manual (SET,
"LOCAL: Specifies that the command takes effect for only the current transaction"). So
the block runs in a transaction, the setting is made at its start (before any savepoint,
so a savepoint rollback inside cannot undo it), and it dies with the transaction on
commit, rollback or error: it cannot survive on a persistent connection, in a pool, or
behind PgBouncer in transaction mode.

``SET LOCAL`` rather than ``set_config(..., true)`` because Citus forwards ``SET
LOCAL`` (not a function call) to the workers of the transaction when
``citus.propagate_set_commands`` is ``'local'``; on Citus (``tenancy.citus.uses_citus``)
that is set first, in the same statement. Every setting goes in ONE round trip: the
``SET LOCAL`` statements are sent as one multi-statement string without parameters
(the simple query protocol), so each value is validated here (a UUID, an integer,
``on``/``off`` or empty) and quoted as a literal. (Citus forwards the text of the query
it received for each ``SET LOCAL`` in it, that is this whole string once per setting;
each copy ends with the same values, so the workers see exactly what the coordinator
does, in a few hundred bytes more per worker connection.)

``app.rls_enabled`` is always set explicitly (``on`` or ``off`` from ``RLS_ENABLED``);
the database default is ``on`` (``tenancy.rls.roles``) and the policies treat a missing
or empty value as ``on``, so a session or a Citus worker that did not get the
transaction's settings enforces row-level security: fail closed on every node.
"""

import contextlib
import contextvars
import logging
import uuid

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from tenancy.citus import uses_citus

logger = logging.getLogger(__name__)

#: The ``reason`` of the innermost active ``cross_tenant`` block (``None`` elsewhere, also
#: inside a tenant context opened within one). Set and reset only in this module.
_cross_tenant_reason_var: contextvars.ContextVar = contextvars.ContextVar(
    "cross_tenant_reason", default=None
)

_SETTINGS = ("app.current_org", "app.rls_enabled", "app.current_user", "app.cross_tenant")


def cross_tenant_reason() -> str | None:
    """The ``reason`` given to the innermost active ``cross_tenant`` block, or ``None`` when
    the code runs in a tenant context (even one opened inside such a block) or in none.
    Mirrors the connection's ``app.cross_tenant``; for logs and the test suite's audit of
    the statements sent across organizations."""
    return _cross_tenant_reason_var.get()


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


def _uuid_or_empty(value: str) -> bool:
    try:
        return value == "" or str(uuid.UUID(value)) == value
    except ValueError:
        return False


#: What each setting may hold: a value outside these is refused, never sent.
_VALID = {
    "app.current_org": _uuid_or_empty,
    "app.current_user": lambda v: v == "" or (v.isascii() and v.isdigit()),
    "app.rls_enabled": lambda v: v in ("on", "off", ""),
    "app.cross_tenant": lambda v: v in ("on", ""),
}


def set_local_sql(values: dict[str, str], *, citus: bool) -> str:
    """The one string of ``SET LOCAL`` statements for ``values`` (``{setting: value}``),
    preceded by ``SET LOCAL citus.propagate_set_commands = 'local'`` when ``citus``.

    Raises:
        ValueError: a setting not in ``_SETTINGS`` or a value it may not hold (a UUID
            in canonical form or ``''`` for ``app.current_org``, digits or ``''`` for
            ``app.current_user``, ``on``/``off``/``''`` for ``app.rls_enabled``,
            ``on``/``''`` for ``app.cross_tenant``).
    """
    statements = ["SET LOCAL citus.propagate_set_commands = 'local'"] if citus else []
    for name, value in values.items():
        check = _VALID.get(name)
        if check is None or not isinstance(value, str) or not check(value):
            raise ValueError(f"refusing to set {name} to {value!r}")
        quoted = ".".join(f'"{part}"' for part in name.split("."))  # current_user: reserved
        statements.append(f"SET LOCAL {quoted} = '{value}'")  # validated: no quote inside
    return "; ".join(statements)


def _restorable(name: str, value: str | None) -> str:
    """A previous value to put back: ``''`` for unset, and for a value this module would
    never have set (someone else's ``set_config``): ``''`` restricts, never widens."""
    value = value or ""
    return value if _VALID[name](value) else ""


def _set_local(connection, values: dict[str, str]) -> None:
    """``SET LOCAL`` each item, in one statement (one round trip; see the module
    docstring). Raises ``ValueError`` for a value ``set_local_sql`` refuses."""
    sql = set_local_sql(values, citus=uses_citus(connection))
    with connection.cursor() as cursor:
        cursor.execute(sql)


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
    _cross_tenant_reason_var.set(None)  # app.cross_tenant is cleared below
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
    ``SET LOCAL`` made inside until the OUTER transaction ends. When the
    block is the outermost transaction nothing needs restoring (it dies with it), so
    this costs a query only when nested. The caller opens its ``atomic`` inside this.
    """
    connection = connections[using]
    previous = None
    reason = _cross_tenant_reason_var.get()
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
        _cross_tenant_reason_var.set(reason)
        if previous is not None and connection.in_atomic_block and not connection.needs_rollback:
            _set_local(connection, {k: _restorable(k, v) for k, v in previous.items()})


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
    documents of every organization, then defers a job for each), the hourly usage-report
    schedule (``billing.tasks``: finds the organizations with pending usage, then queues
    each one's report in its own ``tenant_context``), the staff-only billing pipeline
    health endpoint (``billing.apis``), and test set-up.
    Never in a request handler of the tenant API. ``onboard_tenant`` does not use it: it
    writes the new organization's owner membership inside that organization's own
    ``tenant_context``.

    Logs ``reason`` at INFO (logger ``tenancy.context``) on entry, so every cross-tenant
    block leaves a log line with the request id; the Django admin's requests also write a
    ``StaffAccess`` row (``tenancy.audit``).

    Args:
        reason: free text for readers and logs (what the cross-tenant access is for).
    Raises:
        whatever the block raises; the transaction (or savepoint) is rolled back.
    """
    connection = connections[using]
    logger.info("cross_tenant: %s", reason or "unspecified")
    with connection_settings_restored(using=using), transaction.atomic(using=using):
        _set_local(connection, {"app.cross_tenant": "on"})
        _cross_tenant_reason_var.set(reason or "unspecified")
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
