"""pytest plugin (``conftest.py`` loads it; ``-p tenancy.tests.db_setup`` elsewhere): the
test database is created, migrated and dropped by the owner, and every test logs in as
the app role (``tenancy.rls.roles``, two logins)."""

import pytest


@pytest.fixture(scope="session")
def django_db_setup(
    request,
    django_test_environment,
    django_db_blocker,
    django_db_use_migrations,
    django_db_keepdb,
    django_db_createdb,
    django_db_modify_db_settings,
):
    """pytest-django's ``django_db_setup`` (same steps), with the test database created,
    migrated and dropped on the owner's login (``tenancy.rls.roles.owner_connection``):
    with two logins (``DATABASE_OWNER_URL``, CI, the embedded database) every test then
    connects as the app role itself, so a ``RESET ROLE`` in any code path stays the app
    role."""
    from django.test.utils import setup_databases, teardown_databases
    from pytest_django.fixtures import _disable_migrations, _get_databases_for_setup

    from tenancy.rls.roles import owner_connection

    kwargs = {}
    if not django_db_use_migrations:
        _disable_migrations()
    if django_db_keepdb and not django_db_createdb:
        kwargs["keepdb"] = True
    aliases, serialized_aliases = _get_databases_for_setup(request.session.items)
    verbosity = request.config.option.verbose
    with django_db_blocker.unblock(), owner_connection():
        db_cfg = setup_databases(
            verbosity=verbosity,
            interactive=False,
            aliases=aliases,
            serialized_aliases=serialized_aliases,
            **kwargs,
        )
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock(), owner_connection():
            teardown_databases(db_cfg, verbosity=verbosity)
