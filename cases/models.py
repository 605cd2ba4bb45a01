"""Clients, cases and documents of a law firm. Every row belongs to one organization."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from tenancy.fields import TenantForeignKey
from tenancy.models import TenantModel

#: Characters of a free-text field (``Client.notes``, ``Case.description``): enforced by the
#: serializers (400) and by a CHECK constraint in the database.
MAX_TEXT_LENGTH = 10_000


class Client(TenantModel):
    """A firm's client (person or company). ``notes``: at most ``MAX_TEXT_LENGTH``
    characters."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True, default="")
    phone = models.CharField(max_length=40, blank=True, default="")
    notes = models.TextField(blank=True, default="", max_length=MAX_TEXT_LENGTH)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["organization", "name"])]
        constraints = [
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("notes"), MAX_TEXT_LENGTH),
                name="cases_client_notes_max_length",
            )
        ]

    def __str__(self) -> str:
        return self.name


class CaseStatus(models.TextChoices):
    """A case's state: ``open`` and ``pending`` are active; ``closed`` sets
    ``Case.closed_at`` (cleared again on reopening, by ``cases.services``)."""

    OPEN = "open", "Open"
    PENDING = "pending", "Pending"
    CLOSED = "closed", "Closed"


class Case(TenantModel):
    """A matter for a client; ``reference_number`` is unique within the organization;
    ``description``: at most ``MAX_TEXT_LENGTH`` characters."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = TenantForeignKey(Client, on_delete=models.PROTECT, related_name="cases")
    title = models.CharField(max_length=255)
    reference_number = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=CaseStatus.choices, default=CaseStatus.OPEN)
    description = models.TextField(blank=True, default="", max_length=MAX_TEXT_LENGTH)
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "reference_number"],
                name="cases_case_org_reference_unique",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("description"), MAX_TEXT_LENGTH),
                name="cases_case_description_max_length",
            ),
        ]
        indexes = [models.Index(fields=["organization", "status", "-opened_at"])]

    def __str__(self) -> str:
        return f"{self.reference_number}: {self.title}"


class DocumentProcessingStatus(models.TextChoices):
    """``Document.processing_status``: ``pending`` after upload, then ``processed`` or
    ``failed`` once (``cases.services.document_process``)."""

    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed"


#: UTF-8 bytes of the client's file name kept in an upload's storage name. A path
#: component may be at most 255 bytes on the usual filesystems (``NAME_MAX``: ext4, XFS),
#: and Django's limits count characters: 200 "é" are 400 bytes (``OSError`` ENAMETOOLONG,
#: a 500). The name as sent stays in ``Document.original_filename``.
STORED_NAME_MAX_BYTES = 120


def stored_name(filename: str, max_bytes: int = STORED_NAME_MAX_BYTES) -> str:
    """``filename`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary,
    keeping its extension when that is short (at most 16 bytes with its dot);
    ``"file"`` if nothing is left."""
    if len(filename.encode()) <= max_bytes:
        return filename
    stem, dot, extension = filename.rpartition(".")
    suffix = dot + extension
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = filename, ""
    room = max_bytes - len(suffix.encode())
    return (stem.encode()[:room].decode("utf-8", "ignore") or "file") + suffix


def document_upload_to(instance: "Document", filename: str) -> str:
    """Storage name of an upload: ``documents/<organization id>/<random hex>/<filename>``.

    One folder per organization (an S3 prefix per tenant), and a random 32-hex folder per
    upload, so two uploads of one file name never overwrite each other and names are not
    guessable. The file name is shortened to ``STORED_NAME_MAX_BYTES`` (``stored_name``).
    Django then cleans the result (``FileField.generate_filename``: the storage's
    ``get_valid_name`` on the base name; a ``..`` component raises
    ``SuspiciousFileOperation``).
    """
    return f"documents/{instance.organization_id}/{uuid.uuid4().hex}/{stored_name(filename)}"


class Document(TenantModel):
    """A file attached to a case, stored through Django's storage API (local or S3).

    After upload it is processed once (``cases.services.document_process``): pages
    counted, ``processing_status`` ``pending`` -> ``processed`` (``page_count`` set) or
    ``failed`` (``processing_failure_reason`` says why; a failed document is not billed
    for processing)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    case = TenantForeignKey(Case, on_delete=models.CASCADE, related_name="documents")
    file = models.FileField(upload_to=document_upload_to, max_length=500)
    original_filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=127, blank=True, default="")
    size_bytes = models.BigIntegerField(default=0)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    uploaded_at = models.DateTimeField(default=timezone.now, editable=False)
    processing_status = models.CharField(
        max_length=16,
        choices=DocumentProcessingStatus.choices,
        default=DocumentProcessingStatus.PENDING,
    )
    processing_failure_reason = models.CharField(max_length=500, blank=True, default="")
    page_count = models.PositiveIntegerField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-uploaded_at"]
        indexes = [models.Index(fields=["organization", "case", "-uploaded_at"])]

    def __str__(self) -> str:
        return self.original_filename
