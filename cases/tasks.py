"""Background jobs of cases (procrastinate tasks; the rules are in ``tenancy.jobs``).

``process_document`` counts a document's pages and bills them (``doc.processed``). An
upload defers it in its own transaction (``cases.services.document_create``), so the
document and its job commit together or not at all; ``manage.py process_documents``
defers it again for documents still ``pending``.
"""

from __future__ import annotations

import logging

from django.db import transaction
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from tenancy.jobs import tenant_job, transient_retry

logger = logging.getLogger("cases.documents")

#: The queue of document jobs (``manage.py procrastinate worker --queues documents``).
DOCUMENTS_QUEUE = "documents"


def document_queueing_lock(document_id) -> str:
    """The queueing lock of a document's job: procrastinate keeps at most one ``todo`` job
    per queueing lock (a unique partial index on ``procrastinate_jobs``; procrastinate
    docs, "Ensure tasks don't accumulate in the queue"), so a document never waits in the
    queue twice, however often it is deferred."""
    return f"document:{document_id}"


@app.task(
    name="cases.process_document",
    queue=DOCUMENTS_QUEUE,
    retry=transient_retry(OSError),
)
@tenant_job
def process_document(organization, *, document_id: str) -> str:
    """Job ``process_document(organization_id: str, document_id: str)``: process one
    uploaded document (``cases.services.document_process``) and return its status
    (``"processed"``, ``"failed"``, ``"pending"`` or ``"deleted"``, shown in the job's log
    line and the admin).

    Retried with exponential backoff (``tenancy.jobs.transient_retry``) on a transient
    error: a database ``OperationalError``/``InterfaceError`` or a storage ``OSError``
    (a missing file, ``FileNotFoundError``, is permanent and marks the document failed
    instead). The retried attempt finds the document still ``pending`` (the failed
    attempt's savepoint rolled back) and processes it. When the retries are exhausted the
    job is ``failed`` (``/api/v1/billing/health/``, the admin) and the document stays
    ``pending`` and unbilled; ``manage.py process_documents`` defers it again.

    Safe to run twice (a worker killed after the commit, a manual retry): the document row
    is locked and only a ``pending`` document is processed, and ``doc.processed`` is unique
    per document, so its pages are billed once.
    """
    from cases.services import document_process

    document = document_process(organization=organization, document_id=document_id)
    return "deleted" if document is None else document.processing_status


def defer_processing(*, organization, document_id) -> int | None:
    """Defer ``process_document`` for one document, on the caller's connection and in the
    caller's transaction (``DjangoConnector``): if that transaction rolls back, the job is
    gone with it.

    Returns:
        the job id, or None when the document already has a job waiting in the queue (its
        queueing lock is taken: ``AlreadyEnqueued``), which will process it. The INSERT
        runs in a savepoint, so that refusal (a unique violation) leaves the caller's
        transaction usable.
    """
    deferrer = process_document.configure(queueing_lock=document_queueing_lock(document_id))
    try:
        with transaction.atomic():
            return deferrer.defer(
                organization_id=str(organization.pk), document_id=str(document_id)
            )
    except AlreadyEnqueued:
        return None
