"""Writes for cases. Keyword-only; every function takes the organization explicitly.

Related objects passed in (``client``, ``case``) must already belong to
``organization``: serializers resolve them through ``TenantPrimaryKeyRelatedField``,
and the services check again, raising ``CrossTenantReferenceError``.
"""

import logging

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from billing.services import record_event
from cases.models import Case, CaseStatus, Client, Document, DocumentProcessingStatus
from cases.processing import DocumentProcessingError, count_pages
from goldleaves.middleware import request_id_var
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
    _check_same_tenant(organization, case, "case")
    case.delete()


def _current_request_id() -> str | None:
    value = request_id_var.get()
    return None if value in ("", "-") else value


@transaction.atomic
def document_create(
    *,
    organization,
    acting_user,
    case: Case,
    file: UploadedFile,
    request_id: str | None = None,
) -> Document:
    """Store ``file`` through the default storage and record it against ``case``.

    Records the original filename, the client-declared content type and the
    size in bytes. The file is written to storage first; if the row cannot be
    saved, the stored file is deleted again.

    Billing (issue 3): in the same transaction, a ``doc.upload`` event (1
    ``document``; dimensions ``content_type``, ``size_bytes``, ``filename``),
    idempotent on ``request_id`` (default: the current request's id, so a retried
    upload is billed once). After commit, ``document_process`` runs in-process
    (``transaction.on_commit(..., robust=True)``: a processing crash is logged and
    never fails the upload).
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
        document.save()
    except Exception:
        storage.delete(stored_name)
        raise
    record_event(
        organization=organization,
        event_name="doc.upload",
        event_type="document",
        user=acting_user,
        resource_id=document.pk,
        request_id=request_id or _current_request_id(),
        quantity=1,
        unit="document",
        dimensions={
            "content_type": document.content_type,
            "size_bytes": document.size_bytes,
            "filename": document.original_filename,
        },
    )
    document_id = document.pk
    transaction.on_commit(
        lambda: document_process(organization=organization, document_id=document_id),
        robust=True,
    )
    return document


def document_process(*, organization, document_id) -> Document | None:
    """Count the pages of a pending document and bill them (``doc.processed``).

    Runs in its own tenant transaction (``tenant_context``), after the upload has
    committed. Safe to run twice: the document row is locked (``SELECT ... FOR
    UPDATE``) and only a ``pending`` document is processed; the event's request id
    is ``doc.processed:<document id>``, so it is unique per document anyway.

    On success: ``processed``, ``page_count``, ``processed_at`` and one event of
    ``page_count`` ``page`` units (dimensions ``content_type``, ``pages``). On
    ``DocumentProcessingError`` (or a storage error): ``failed`` with the reason,
    and no event.

    Returns:
        the document, or ``None`` if it no longer exists.
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
            with document.file.open("rb") as handle:
                pages = count_pages(
                    handle,
                    content_type=document.content_type,
                    filename=document.original_filename,
                )
        except (DocumentProcessingError, OSError) as exc:
            document.processing_status = DocumentProcessingStatus.FAILED
            document.processing_failure_reason = str(exc)[:500] or exc.__class__.__name__
            document.processed_at = timezone.now()
            document.save(
                update_fields=["processing_status", "processing_failure_reason", "processed_at"]
            )
            logger.warning("document %s not processed: %s", document.pk, exc)
            return document
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
        return document


@transaction.atomic
def document_update(*, organization, acting_user, document: Document, **fields) -> Document:
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
