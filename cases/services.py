"""Writes for cases. Keyword-only; every function takes the organization explicitly.

Related objects passed in (``client``, ``case``) must already belong to
``organization``: serializers resolve them through ``TenantPrimaryKeyRelatedField``,
and the services check again, raising ``CrossTenantReferenceError``.
"""

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from cases.models import Case, CaseStatus, Client, Document


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


@transaction.atomic
def document_create(*, organization, acting_user, case: Case, file: UploadedFile) -> Document:
    """Store ``file`` through the default storage and record it against ``case``.

    Records the original filename, the client-declared content type and the
    size in bytes. The file is written to storage first; if the row cannot be
    saved, the stored file is deleted again.
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
