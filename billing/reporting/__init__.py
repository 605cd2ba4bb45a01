"""Usage reporting to Stripe that never double-bills and never swallows late usage.

One module per concern; a module that logs has its own logger
(``billing.reporting.<module>``). Nothing is re-exported here: import a name from the
module that defines it.

* ``identifiers``: the reported hour, aggregate identifiers, meter event values (Stripe's
  limits on timestamps and values).
* ``outbox``: ``UsageAggregate`` rows built from pending billing events (oversized hours
  split), and their acknowledgement once Stripe has them.
* ``stripe_api``: the Stripe client, and what each failed request means.
* ``send``: one aggregate sent as one meter event, with retries.
* ``reconciliation``: the resend window, and the admin's retry and reconcile actions.
* ``locks``: the organization's PostgreSQL advisory locks.
* ``lifecycle``: a report's status (claimed, finished, failed).
* ``runs``: ``report_usage``, one organization's run; its doc describes the whole flow.
* ``queue``: ``report_queue``, a report run queued as a job (``POST report-usage/``, the
  hourly schedule of ``billing.tasks``).

Imports inside the package run one way: ``identifiers``, ``stripe_api``, ``locks`` and
``lifecycle`` import no sibling; ``outbox`` imports ``identifiers``; ``reconciliation``
imports ``outbox``; ``send`` imports ``identifiers``, ``reconciliation`` and
``stripe_api``; ``runs`` imports all of these but ``reconciliation`` (which ``send``
uses); ``queue`` imports ``locks`` and ``identifiers`` (and ``billing.tasks``, whose job runs
``runs``).
"""
