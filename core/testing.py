"""Database test helpers for tests that run work on two connections at once.

Importable from any test module (``from core.testing import race_second_behind_first``).
The threads here are test plumbing: each one holds its own database connection, so a test
can prove that PostgreSQL makes one transaction wait for another.
"""

import threading
import time

from django.db import connection, transaction


def wait_for_blockers(pids: dict, results: dict, *, waiter="second", timeout=20.0) -> list:
    """Poll ``pg_blocking_pids`` of the backend ``pids[waiter]`` (PostgreSQL manual, 9.26
    "System Information Functions") until it is blocked by another backend or has
    finished (``waiter in results``), for at most ``timeout`` seconds. Returns the
    blocking backends' pids: ``[]`` means it never waited. For tests that prove a
    second connection really queues behind a first one."""
    blockers: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and waiter not in results:
        if waiter in pids:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_blocking_pids(%s)", [pids[waiter]])
                blockers = cursor.fetchone()[0]
            if blockers:
                break
        time.sleep(0.02)
    return blockers


def race_second_behind_first(first, second, *, what="the second", timeout=20.0) -> dict:
    """Prove that PostgreSQL makes ``second`` wait for ``first``, then let both finish.

    ``first()`` runs in a thread on its own connection inside ``transaction.atomic()``,
    which is held open after it returns; then ``second()`` runs in another thread on its
    own connection. Asserts that the second backend was blocked by the first
    (``wait_for_blockers``), releases the first transaction (it commits) and joins both.
    Returns ``{"first": result, "second": result}``, an exception raised by either in
    place of its result. Needs ``transaction=True`` tests (real commits).
    """
    held, release = threading.Event(), threading.Event()
    pids: dict = {}
    results: dict = {}

    def run_first() -> None:
        try:
            with transaction.atomic():
                pids["first"] = connection.connection.info.backend_pid
                results["first"] = first()
                held.set()
                assert release.wait(timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
            results["first"] = exc
        finally:
            held.set()
            connection.close()

    def run_second() -> None:
        try:
            connection.ensure_connection()
            pids["second"] = connection.connection.info.backend_pid
            results["second"] = second()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
            results["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    threads[0].start()
    assert held.wait(timeout) and not isinstance(results.get("first"), Exception), results.get(
        "first"
    )
    threads[1].start()
    try:
        blockers = wait_for_blockers(pids, results, timeout=timeout)
        assert blockers == [pids["first"]], f"{what} never waited on the first"
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout + 10)
    return results
