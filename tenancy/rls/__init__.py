"""Row-level security: the database side of tenant isolation.

* ``policies``: which tables are tenant tables (derived from the models), the
  ``tenant_isolation`` policy and the composite same-organization foreign keys, as SQL,
  and ``sync_tables``, the post-``migrate`` backstop that applies them;
* ``operations``: the migration operation ``TenantRowLevelSecurity`` and
  ``protected_tables`` (the tenant tables of the applied migration state);
* ``isolation``: the catalog check behind ``manage.py check_isolation``;
* ``roles``: the app role that requests run as, the owner connection that ``migrate``
  and ``flush`` run on, and the ``app.rls_enabled`` database default.

The request side (``tenant_context``, ``cross_tenant``) lives in ``tenancy.context``.
"""


class RowLevelSecurityError(Exception):
    """Row-level security or the database roles could not be set up as required: a table
    lock not granted in time, an app role the login role may not create, a database
    default it may not write, or a role switch asked for inside a transaction. The message
    says what was (not) done and what to run; ``migrate`` and ``flush`` turn it into a
    ``CommandError`` (exit status 1)."""
