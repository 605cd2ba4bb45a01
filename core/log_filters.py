"""Logging filters of the project's ``LOGGING`` (settings.py); no app is imported here."""

import logging


class DropPeriodicRegistration(logging.Filter):
    """Drops procrastinate's "Registering task ... to run periodically" records (their
    ``action`` is ``registering_periodic_task``): procrastinate logs each periodic task
    once when its module registers it and once more when its Django app copies the
    registry (``procrastinate.contrib.django``), on every start of every process, so
    ``runserver``, each command and each worker printed the same line twice. The worker's
    own periodic lines (deferring a job on schedule) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "action", None) != "registering_periodic_task"
