"""Writes for cases. Keyword-only; every function takes the organization explicitly.

Related objects passed in (``client``, ``case``) must already belong to
``organization``: serializers resolve them through ``TenantPrimaryKeyRelatedField``,
and the services check again, raising ``CrossTenantReferenceError``.
"""

import logging

from django.core.files.uploadedfile import UploadedFile
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from billing.services import event_record
from cases.models import Case, CaseStatus, Client, Document, DocumentProcessingStatus
from cases.processing import DocumentProcessingError, count_pages
from cases.tasks import defer_processing
from tenancy.context import tenant_context

logger = logging.getLogger("cases.documents")


class CrossTenantReferenceError(ValueError):
    """A related object belongs to another organization."""


def _check_same_tenant(organization, obj, label: str) -> None:
    if obj is not None and obj.organization_id != organization.pk:
        raise CrossTenantReferenceError(f"{label} belongs to another organization")


def _apply(instance, fields: dict) -> list[str]:
    for name, value in fields.items():
        setattr(instance, name, value)
    return list(fields)


@transaction.atomic
def client_create(*, organization, acting_user, name: str, **fields) -> Client:
    """Create a client of ``organization``. ``fields``: email, phone, notes."""
    return Client.objects.create(organization=organization, name=name, **fields)


@transaction.atomic
def client_update(*, organization, acting_user, client: Client, **fields) -> Client:
    """Set ``fields`` (name, email, phone, notes) on ``client`` and save only those columns.

    Returns:
        the updated ``Client``.
    Raises:
        CrossTenantReferenceError: ``client`` belongs to another organization.
    """
    _check_same_tenant(organization, client, "client")
    client.save(update_fields=_apply(client, fields))
    return client


@transaction.atomic
def client_delete(*, organization, acting_user, client: Client) -> None:
    """Delete a client. Raises ``django.db.models.ProtectedError`` if it still has cases."""
    _check_same_tenant(organization, client, "client")
    client.delete()


def _closed_at_for(status: str, current):
    if status == CaseStatus.CLOSED:
        return current or timezone.now()
    return None


@transaction.atomic
def case_create(
    *,
    organization,
    acting_user,
    client: Client,
    title: str,
    reference_number: str,
    **fields,
) -> Case:
    """Create a case for ``client`` (same organization). ``closed_at`` follows ``status``."""
    _check_same_tenant(organization, client, "client")
    status = fields.pop("status", CaseStatus.OPEN)
    closed_at = fields.pop("closed_at", None)
    return Case.objects.create(
        organization=organization,
        client=client,
        title=title,
        reference_number=reference_number,
        status=status,
        closed_at=_closed_at_for(status, closed_at),
        **fields,
    )


@transaction.atomic
def case_update(*, organization, acting_user, case: Case, **fields) -> Case:
    """Update a case; closing sets ``closed_at`` (now, unless given), reopening clears it."""
    _check_same_tenant(organization, case, "case")
    _check_same_tenant(organization, fields.get("client"), "client")
    if "status" in fields:
        fields["closed_at"] = _closed_at_for(
            fields["status"], fields.get("closed_at") or case.closed_at
        )
    case.save(update_fields=_apply(case, fields))
    return case


@transaction.atomic
def case_delete(*, organization, acting_user, case: Case) -> None:
    """Delete ``case`` and, by cascade, its documents' rows (stored files are not removed).

    Raises:
        CrossTenantReferenceError: ``case`` belongs to another organization.
    """
    _check_same_tenant(organization, case, "case")
    case.delete()


@transaction.atomic
def document_create(
    *,
    organization,
    acting_user,
    case: Case,
    file: UploadedFile,
    request_id: str | None,
) -> Document:
    """Store ``file`` through the default storage, record it against ``case`` and bill it
    once (``doc.upload``).

    Records the original filename, ``file.content_type`` (through the API: the type
    detected from the bytes, ``cases.uploads.document_type_detect``, never the client's)
    and the size in bytes. Every call creates a new document: a retried upload is recognised by its
    ``Idempotency-Key`` before the view runs (``billing.idempotency``: same key and same
    bytes replay the first answer; other bytes are a 422), never here, and never by the
    client's ``X-Request-ID``.

    Order, all in the caller's transaction (the request's): the file is written to
    storage and the document row saved (if the row cannot be saved, the stored file is
    deleted again and the error propagates); then the ``doc.upload`` billing event (1
    ``document``; dimensions ``content_type``, ``size_bytes``, ``filename`` and
    ``request_id``, the server id of the upload request; ``resource_id`` = the document)
    is recorded with request id ``doc.upload:<document id>``: keyed on the document,
    unique per organization and event name, so each document is billed exactly once for
    its upload, whatever the request ids. The API passes the request's server id as
    ``request_id`` (``request.request_id``); code outside a request passes ``None``.
    Then the ``process_document`` job is deferred in the same transaction
    (``cases.tasks.defer_processing``): it commits with the document or not at all, and a
    worker processes the document once it is committed (``document_process``). The
    upload answers ``pending`` at once.

    Returns:
        the new ``Document``.
    Raises:
        CrossTenantReferenceError: ``case`` belongs to another organization.
    """
    _check_same_tenant(organization, case, "case")
    document = Document(
        organization=organization,
        case=case,
        original_filename=file.name[:255],
        content_type=(getattr(file, "content_type", "") or "")[:127],
        size_bytes=file.size or 0,
        uploaded_by=acting_user,
    )
    document.file.save(file.name, file, save=False)
    stored_name = document.file.name
    storage = document.file.storage
    try:
        document.save(force_insert=True)
    except Exception:
        storage.delete(stored_name)
        raise
    event_record(
        organization=organization,
        event_name="doc.upload",
        event_type="document",
        user=acting_user,
        resource_id=document.pk,
        request_id=f"doc.upload:{document.pk}",
        quantity=1,
        unit="document",
        dimensions={
            "content_type": document.content_type,
            "size_bytes": document.size_bytes,
            "filename": document.original_filename,
            "request_id": request_id,
        },
    )
    defer_processing(organization=organization, document_id=document.pk)
    return document


def _mark_failed(document: Document, reason: str) -> None:
    document.processing_status = DocumentProcessingStatus.FAILED
    document.processing_failure_reason = reason[:500]
    document.page_count = None
    document.processed_at = timezone.now()
    document.save(
        update_fields=[
            "processing_status",
            "processing_failure_reason",
            "page_count",
            "processed_at",
        ]
    )


def document_process(*, organization, document_id) -> Document | None:
    """Count the pages of a pending document and bill them (``doc.processed``).

    The body of the ``process_document`` job (``cases.tasks``), which an upload defers in
    its own transaction, so this runs once the upload has committed, in its own tenant
    transaction (``tenant_context``). Safe to run twice: the document row is locked
    (``SELECT ... FOR UPDATE``) and only a ``pending`` document is processed; the event's
    request id is ``doc.processed:<document id>`` and its unique constraint (organization,
    event name, request id) admits one per document anyway.

    On success: ``processed``, ``page_count``, ``processed_at`` and one event of
    ``page_count`` ``page`` units (dimensions ``content_type``, ``pages``). The
    counting and those writes run in a savepoint, rolled back on any error, so there is
    never a half-processed document or an event without it. Then:

    * ``DocumentProcessingError``, or the stored file is missing (``FileNotFoundError``):
      the document is ``failed`` with the reason (shown to users), ``processed_at`` set
      and NO event; logged at WARNING. Permanent: another attempt would fail the same.
    * a transient error: a database ``OperationalError`` (a statement timeout, a
      serialization failure, a deadlock, a lost connection) or ``InterfaceError``, or a
      storage ``OSError`` other than a missing file (a network file system or bucket
      that did not answer): propagates. The transaction rolls back and the document stays
      ``pending``: the failure is not the document's, so it is neither failed nor left
      unbilled for good; the job is retried with backoff (``cases.tasks``).
    * any other exception, including a permanent database error (``DataError``,
      ``IntegrityError``, ``ProgrammingError``: the same on every retry), or a bug in a
      parser: ``failed`` with the reason
      ``unexpected processing error (<exception class>)`` (no internal detail shown to
      users), NO event; logged at ERROR with the document id and the traceback.

    Returns:
        the document, or ``None`` if it no longer exists.
    Raises:
        django.db.DatabaseError, OSError: from locking the row, a transient error while
            processing (see above), or marking it failed; the document is then still
            ``pending``.
    """
    with tenant_context(organization):
        document = (
            Document.objects.select_for_update()
            .filter(organization_id=organization.pk, pk=document_id)
            .first()
        )
        if document is None or document.processing_status != DocumentProcessingStatus.PENDING:
            return document
        try:
            with transaction.atomic():
                _count_and_bill(organization, document)
        except DocumentProcessingError as exc:
            _mark_failed(document, str(exc) or exc.__class__.__name__)
            logger.warning("document %s not processed: %s", document.pk, exc)
        except FileNotFoundError:
            _mark_failed(document, "the stored file is missing")
            logger.warning(
                "document %s not processed: stored file %s missing", document.pk, document.file.name
            )
        except (OperationalError, InterfaceError, OSError):
            raise  # transient: the savepoint is rolled back; the document stays pending
        except Exception as exc:
            _mark_failed(document, f"unexpected processing error ({exc.__class__.__name__})")
            logger.exception("document %s: unexpected processing error; marked failed", document.pk)
        return document


def _count_and_bill(organization, document: Document) -> None:
    with document.file.open("rb") as handle:
        pages = count_pages(
            handle,
            content_type=document.content_type,
            filename=document.original_filename,
        )
    document.processing_status = DocumentProcessingStatus.PROCESSED
    document.page_count = pages
    document.processed_at = timezone.now()
    document.save(update_fields=["processing_status", "page_count", "processed_at"])
    event_record(
        organization=organization,
        event_name="doc.processed",
        event_type="document",
        user_id=document.uploaded_by_id,
        resource_id=document.pk,
        request_id=f"doc.processed:{document.pk}",
        quantity=pages,
        unit="page",
        dimensions={"content_type": document.content_type, "pages": pages},
    )


@transaction.atomic
def document_update(*, organization, acting_user, document: Document, **fields) -> Document:
    """Set ``fields`` on ``document`` and save only those columns. Through the API the
    only writable field is ``case`` (``DocumentUpdateSerializer``: the file and its
    metadata are immutable); the stored file and its billing events are unchanged.

    Returns:
        the updated ``Document``.
    Raises:
        CrossTenantReferenceError: ``document`` or the new ``case`` belongs to another
            organization.
    """
    _check_same_tenant(organization, document, "document")
    _check_same_tenant(organization, fields.get("case"), "case")
    document.save(update_fields=_apply(document, fields))
    return document


@transaction.atomic
def document_delete(*, organization, acting_user, document: Document) -> None:
    """Delete the row, and the stored file once the deletion has committed."""
    _check_same_tenant(organization, document, "document")
    storage, name = document.file.storage, document.file.name
    document.delete()
    transaction.on_commit(lambda: storage.delete(name))
