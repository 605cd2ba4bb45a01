"""Serializers for clients, cases and documents. Related ids resolve within the
organization of the serializer context (``context["organization"]``, the request's,
through ``TenantPrimaryKeyRelatedField``): another organization's id is a 400 "does
not exist"."""

from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from cases.models import Case, Client, Document
from cases.uploads import document_type_detect, file_too_large, max_document_bytes
from core.serializers import StrictModelSerializer
from tenancy.viewsets import TenantPrimaryKeyRelatedField


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "New client",
            value={"name": "Jane Roe", "email": "jane@roe.test", "phone": "+1 555 0100"},
            request_only=True,
        ),
        OpenApiExample(
            "Client",
            value={
                "id": "5f0c7a52-3e0b-4d57-9a0e-2b7d61c4e8a1",
                "name": "Jane Roe",
                "email": "jane@roe.test",
                "phone": "+1 555 0100",
                "notes": "",
                "created_at": "2026-11-02T09:15:00Z",
            },
            response_only=True,
        ),
    ]
)
class ClientSerializer(StrictModelSerializer):
    """A client as JSON: ``{"id": uuid, "name": str, "email": str, "phone": str,
    "notes": str, "created_at": ISO 8601 UTC}``; ``id`` and ``created_at`` are read-only.
    ``name`` is required (max 200 characters); ``email`` must be a valid address or ``""``;
    ``phone`` max 40 and ``notes`` max 10,000 characters (``MAX_TEXT_LENGTH``); no string
    may contain NUL (U+0000). Invalid input is a DRF ``ValidationError`` (400, field errors)."""

    class Meta:
        model = Client
        fields = ["id", "name", "email", "phone", "notes", "created_at"]
        read_only_fields = ["id", "created_at"]


_NEW_CASE = {
    "client": "5f0c7a52-3e0b-4d57-9a0e-2b7d61c4e8a1",
    "title": "Roe v. Acme Corp",
    "reference_number": "2026-0042",
    "status": "open",
    "description": "Contract dispute.",
    "opened_at": "2026-11-02T09:30:00Z",
}


@extend_schema_serializer(
    examples=[
        OpenApiExample("New case", value=_NEW_CASE, request_only=True),
        OpenApiExample(
            "Case",
            value={"id": "9c1e4b7a-2d3f-4a5b-8c6d-7e8f9a0b1c2d", **_NEW_CASE, "closed_at": None},
            response_only=True,
        ),
    ]
)
class CaseSerializer(StrictModelSerializer):
    """A case as JSON: ``{"id": uuid, "client": client uuid, "title": str,
    "reference_number": str, "status": "open"|"pending"|"closed", "description": str,
    "opened_at": ISO 8601 UTC, "closed_at": ISO 8601 UTC or null}``.

    ``id`` and ``closed_at`` are read-only (``closed_at`` follows ``status``, set by
    ``cases.services``). ``title`` max 255, ``reference_number`` max 64, ``description``
    max 10,000 characters (``MAX_TEXT_LENGTH``). Needs ``context["organization"]`` (an
    ``Organization``; the tenant views' ``get_serializer_context`` puts the request's
    there).
    Raises ``ValidationError`` (400) for a ``client`` of another organization ("does not
    exist") or a ``reference_number`` already used in this organization.
    """

    client = TenantPrimaryKeyRelatedField(queryset=Client.objects.all())

    class Meta:
        model = Case
        fields = [
            "id",
            "client",
            "title",
            "reference_number",
            "status",
            "description",
            "opened_at",
            "closed_at",
        ]
        read_only_fields = ["id", "closed_at"]
        # Uniqueness per organization is checked in validate(); the model's
        # constraint is the last word.
        validators: list = []

    def validate(self, attrs):
        """Reject a ``reference_number`` another case of the request's organization has
        (``ValidationError`` on that field); other organizations' numbers do not count."""
        reference = attrs.get("reference_number")
        organization = self.context["organization"]
        if reference is not None:
            clash = Case.objects.for_organization(organization).filter(reference_number=reference)
            if self.instance is not None:
                clash = clash.exclude(pk=self.instance.pk)
            if clash.exists():
                raise serializers.ValidationError(
                    {"reference_number": ["A case with this reference number already exists."]}
                )
        return attrs


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Uploaded document",
            value={
                "id": "3a2b1c0d-4e5f-4a6b-9c7d-8e9f0a1b2c3d",
                "case": "9c1e4b7a-2d3f-4a5b-8c6d-7e8f9a0b1c2d",
                "download_url": "/api/v1/documents/3a2b1c0d-4e5f-4a6b-9c7d-8e9f0a1b2c3d/download/",
                "original_filename": "engagement-letter.pdf",
                "content_type": "application/pdf",
                "size_bytes": 48213,
                "uploaded_by": 7,
                "uploaded_at": "2026-11-02T09:45:00Z",
                "processing_status": "pending",
                "processing_failure_reason": "",
                "page_count": None,
                "processed_at": None,
            },
            response_only=True,
        )
    ]
)
class DocumentSerializer(StrictModelSerializer):
    """A document as JSON; created by a multipart upload of ``case`` (uuid) and ``file``.

    Output: ``{"id", "case", "download_url", "original_filename", "content_type",
    "size_bytes" (int, bytes), "uploaded_by" (user id or null), "uploaded_at" (ISO 8601
    UTC), "processing_status" ("pending"|"processed"|"failed"),
    "processing_failure_reason", "page_count" (int or null), "processed_at"}``; ``file``
    is write-only and every field but ``case`` is read-only (set by ``cases.services``).
    ``content_type`` is the type detected from the bytes (``cases.uploads``), never the
    client's.

    Raises ``ValidationError`` (400) for a ``case`` of another organization or a missing
    or empty file; ``PayloadTooLarge`` (413 ``file_too_large``) for a file over
    ``DOCUMENT_MAX_BYTES`` (refused while streaming, by ``cases.uploads``);
    ``UnsupportedFileType`` (415 ``unsupported_file_type`` / ``file_type_mismatch``).
    """

    case = TenantPrimaryKeyRelatedField(queryset=Case.objects.all())
    file = serializers.FileField(write_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = [
            "id",
            "case",
            "file",
            "download_url",
            "original_filename",
            "content_type",
            "size_bytes",
            "uploaded_by",
            "uploaded_at",
            "processing_status",
            "processing_failure_reason",
            "page_count",
            "processed_at",
        ]
        read_only_fields = [
            "id",
            "original_filename",
            "content_type",
            "size_bytes",
            "uploaded_by",
            "uploaded_at",
            "processing_status",
            "processing_failure_reason",
            "page_count",
            "processed_at",
        ]

    def get_download_url(self, obj) -> str:
        """The path of the document's download endpoint,
        ``/api/v1/documents/<id>/download/`` (``cases.downloads``: members only; media is
        never served publicly); ``""`` without a file."""
        return reverse("document-download", args=[obj.pk]) if obj.file else ""

    def validate_file(self, value):
        """Refuse a file over ``DOCUMENT_MAX_BYTES`` (413; the parser refuses it earlier
        while streaming) or of a type not accepted (415, ``document_type_detect``); set its
        ``content_type`` to the detected type, which the service stores."""
        limit = max_document_bytes()
        if value.size > limit:
            raise file_too_large(limit)
        value.content_type = document_type_detect(value)
        return value


class DocumentUpdateSerializer(DocumentSerializer):
    """Updates move a document to another case of the organization; the file is immutable."""

    class Meta(DocumentSerializer.Meta):
        read_only_fields = DocumentSerializer.Meta.read_only_fields

    def get_fields(self):
        fields = super().get_fields()
        fields.pop("file")
        return fields
