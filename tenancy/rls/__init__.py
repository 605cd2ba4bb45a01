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
