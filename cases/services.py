"""Writes for cases. Keyword-only; every function takes the organization explicitly.

Related objects passed in (``client``, ``case``) must already belong to
``organization``: serializers resolve them through ``TenantPrimaryKeyRelatedField``,
and the services check again, raising ``CrossTenantReferenceError``.
"""

import logging

from django.core.files.uploadedfile import UploadedFile
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from billing.selectors import event_resource_id
from billing.services import record_event
from cases.models import Case, CaseStatus, Client, Document, DocumentProcessingStatus
from cases.processing import DocumentProcessingError, count_pages
from tenancy.context import tenant_context

logger = logging.getLogger("cases.documents")


class CrossTenantReferenceError(ValueError):
    """A related object belongs to another organization."""


class UploadRequestIdConflict(ValueError):
    """An upload reuses a request id whose first upload cannot be replayed: the document
    it created no longer exists, or it was a different upload (another case, file name
    or size). The message says which; the API answers 409."""


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
    """Store ``file`` through the default storage and record it against ``case``;
    idempotent on (organization, request id).

    Records the original filename, the client-declared content type and the size in
    bytes. ``request_id`` is the idempotency key: the API passes the request's id
    (``request.request_id``: the client's valid ``X-Request-ID``, or the one the server
    generated); code outside a request passes ``None``, and then every call creates a
    document.

    Order, all in the caller's transaction (the request's):

    1. The ``doc.upload`` billing event (1 ``document``; dimensions ``content_type``,
       ``size_bytes``, ``filename``; ``resource_id`` = the new document's id, chosen
       now) is inserted FIRST, with ``INSERT ... ON CONFLICT DO NOTHING``
       (``billing.services.record_event``). The unique constraint on (organization,
       event_name, request_id) is the arbiter between retries: of two concurrent
       uploads with the same request id, the second's INSERT waits on the unique
       index until the first commits (PostgreSQL manual, INSERT, "ON CONFLICT
       Clause") and then inserts nothing; if the first rolls back, the second's
       INSERT creates the row instead.
    2. Only when that INSERT created the row: the file is written to storage and the
       document row saved (if the row cannot be saved, the stored file is deleted
       again and the error propagates, rolling the event back with it); processing is
       scheduled after commit (``transaction.on_commit``; the callback never raises, see
       ``_process_after_commit`` and ``document_process``).
    3. When it did not (a retry): no file is stored and no row is created; the
       document the first upload created (the event's ``resource_id``) is returned as
       it is now. The API answers it as the first upload was answered, ``201`` with
       the document (a replay returns the original result, as Stripe's idempotent
       requests do: https://docs.stripe.com/api/idempotent_requests).

    Returns:
        the new ``Document``, or on a retry the one the first upload created.
    Raises:
        CrossTenantReferenceError: ``case`` belongs to another organization.
        UploadRequestIdConflict: a retry whose first upload's document was deleted
            since, or whose case, file name or size differ from the first upload
            (the request id was reused for another upload; Stripe also refuses
            those).
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
    created = record_event(
        organization=organization,
        event_name="doc.upload",
        event_type="document",
        user=acting_user,
        resource_id=document.pk,
        request_id=request_id,
        quantity=1,
        unit="document",
        dimensions={
            "content_type": document.content_type,
            "size_bytes": document.size_bytes,
            "filename": document.original_filename,
        },
    )
    if created is None:
        return _replayed_upload(organization=organization, request_id=request_id, new=document)
    document.file.save(file.name, file, save=False)
    stored_name = document.file.name
    storage = document.file.storage
    try:
        document.save(force_insert=True)
    except Exception:
        storage.delete(stored_name)
        raise
    document_id = document.pk
    transaction.on_commit(
        lambda: _process_after_commit(organization=organization, document_id=document_id)
    )
    return document


def _replayed_upload(*, organization, request_id: str, new: Document) -> Document:
    """The document of the earlier upload with ``request_id`` (whose ``doc.upload``
    event made this upload's INSERT a no-op), checked against the retried one ``new``."""
    resource_id = event_resource_id(
        organization=organization, event_name="doc.upload", request_id=request_id
    )
    document = (
        Document.objects.filter(organization_id=organization.pk, pk=resource_id).first()
        if resource_id is not None
        else None
    )
    if document is None:
        raise UploadRequestIdConflict(
            f"request id {request_id!r} was already used by an upload whose document "
            "no longer exists; send the upload with a new X-Request-ID"
        )
    first = (document.case_id, document.original_filename, document.size_bytes)
    if first != (new.case_id, new.original_filename, new.size_bytes):
        raise UploadRequestIdConflict(
            f"request id {request_id!r} was already used for another upload "
            f"(document {document.pk}); send a different upload with a new X-Request-ID"
        )
    logger.info("upload retry %s: returning document %s", request_id, document.pk)
    return document


def _process_after_commit(*, organization, document_id) -> None:
    """The ``on_commit`` callback of an upload: ``document_process``. If that raised (a
    database error: statement timeout, serialization failure, lost connection...; it
    marks the document failed for any other error), log at ERROR with the document id
    and the traceback: the document stays ``pending``, unbilled for processing, and
    ``manage.py process_documents`` (the retry path, run from cron) processes it later.

    Never raises (the upload has committed; a raising callback would also skip the
    other ``on_commit`` callbacks), so it is registered without ``robust=True``: this
    is the one place that logs, naming the document."""
    try:
        document_process(organization=organization, document_id=document_id)
    except Exception:  # noqa: BLE001 - logged; the retry path is process_documents
        logger.exception(
            "document %s: processing did not run; it stays pending until "
            "manage.py process_documents retries it",
            document_id,
        )


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

    Runs in its own tenant transaction (``tenant_context``), after the upload has
    committed. Safe to run twice: the document row is locked (``SELECT ... FOR
    UPDATE``) and only a ``pending`` document is processed; the event's request id
    is ``doc.processed:<document id>``, so it is unique per document anyway.

    Called after an upload commits (``_process_after_commit``) and by ``manage.py
    process_documents``, the retry path for documents still ``pending``.

    On success: ``processed``, ``page_count``, ``processed_at`` and one event of
    ``page_count`` ``page`` units (dimensions ``content_type``, ``pages``). The
    counting and those writes run in a savepoint, rolled back on any error, so there is
    never a half-processed document or an event without it. Then:

    * ``DocumentProcessingError`` or a storage error (``OSError``): the document is
      ``failed`` with the error's message as the reason (shown to users),
      ``processed_at`` set and NO event; logged at WARNING.
    * a transient database error (``OperationalError``: a statement timeout, a
      serialization failure, a deadlock, a lost connection; ``InterfaceError``):
      propagates. The transaction rolls back and the document stays ``pending``: the
      failure is not the document's, so it is neither failed nor left unbilled for
      good; ``process_documents`` retries it.
    * any other exception, including a permanent database error (``DataError``,
      ``IntegrityError``, ``ProgrammingError``: the same on every retry), or a bug in a
      parser: ``failed`` with the reason
      ``unexpected processing error (<exception class>)`` (no internal detail shown to
      users), NO event; logged at ERROR with the document id and the traceback.

    Returns:
        the document, or ``None`` if it no longer exists.
    Raises:
        django.db.DatabaseError: from locking the row, a transient error while
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
        except (DocumentProcessingError, OSError) as exc:
            _mark_failed(document, str(exc) or exc.__class__.__name__)
            logger.warning("document %s not processed: %s", document.pk, exc)
        except (OperationalError, InterfaceError):
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
    record_event(
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
