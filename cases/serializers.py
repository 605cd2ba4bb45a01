"""Serializers for clients, cases and documents. Related ids resolve within the
organization of the serializer context (``context["organization"]``, the request's,
through ``TenantPrimaryKeyRelatedField``): another organization's id is a 400 "does
not exist"."""

from rest_framework import serializers

from cases.models import Case, Client, Document
from tenancy.viewsets import TenantPrimaryKeyRelatedField

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class ClientSerializer(serializers.ModelSerializer):
    """A client as JSON: ``{"id": uuid, "name": str, "email": str, "phone": str,
    "notes": str, "created_at": ISO 8601 UTC}``; ``id`` and ``created_at`` are read-only.
    ``name`` is required (max 200 characters); ``email`` must be a valid address or ``""``.
    Invalid input is a DRF ``ValidationError`` (400, field errors)."""

    class Meta:
        model = Client
        fields = ["id", "name", "email", "phone", "notes", "created_at"]
        read_only_fields = ["id", "created_at"]


class CaseSerializer(serializers.ModelSerializer):
    """A case as JSON: ``{"id": uuid, "client": client uuid, "title": str,
    "reference_number": str, "status": "open"|"pending"|"closed", "description": str,
    "opened_at": ISO 8601 UTC, "closed_at": ISO 8601 UTC or null}``.

    ``id`` and ``closed_at`` are read-only (``closed_at`` follows ``status``, set by
    ``cases.services``). Needs ``context["organization"]`` (an ``Organization``; the
    tenant views' ``get_serializer_context`` puts the request's there).
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


class DocumentSerializer(serializers.ModelSerializer):
    """A document as JSON; created by a multipart upload of ``case`` (uuid) and ``file``.

    Output: ``{"id", "case", "download_url", "original_filename", "content_type",
    "size_bytes" (int, bytes), "uploaded_by" (user id or null), "uploaded_at" (ISO 8601
    UTC), "processing_status" ("pending"|"processed"|"failed"),
    "processing_failure_reason", "page_count" (int or null), "processed_at"}``; ``file``
    is write-only and every field but ``case`` is read-only (set by ``cases.services``).
    Raises ``ValidationError`` (400) for a ``case`` of another organization, a missing
    file, or a file over ``MAX_UPLOAD_BYTES`` (50 MiB).
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
        """The storage backend's URL of the file (``MEDIA_URL`` path or S3 URL); ``""``
        without a file."""
        return obj.file.url if obj.file else ""

    def validate_file(self, value):
        """Refuse a file larger than ``MAX_UPLOAD_BYTES`` (``ValidationError``)."""
        if value.size > MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"File too large: the limit is {MAX_UPLOAD_BYTES} bytes."
            )
        return value


class DocumentUpdateSerializer(DocumentSerializer):
    """Updates move a document to another case of the organization; the file is immutable."""

    class Meta(DocumentSerializer.Meta):
        read_only_fields = DocumentSerializer.Meta.read_only_fields

    def get_fields(self):
        fields = super().get_fields()
        fields.pop("file")
        return fields
