"""Case-management API: thin viewsets over ``cases.selectors`` and ``cases.services``."""

from django.db.models import ProtectedError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated

from cases import selectors, services
from cases.downloads import document_download_response
from cases.filters import CaseFilter, ClientFilter, DocumentFilter
from cases.models import Case, Client, Document
from cases.serializers import (
    CaseSerializer,
    ClientSerializer,
    DocumentSerializer,
    DocumentUpdateSerializer,
)
from cases.uploads import DocumentMultiPartParser, file_too_large
from core.parsers import BoundedJSONParser, upload_limit_exceeded
from tenancy.permissions import MembersWriteAdminsDelete
from tenancy.viewsets import TenantModelViewSet


class _ServiceViewSet(TenantModelViewSet):
    """Routes create/update/delete to the services named by the subclass. Members read,
    create and change; deleting needs ``admin`` or ``owner`` (``MembersWriteAdminsDelete``)."""

    permission_classes = [IsAuthenticated, MembersWriteAdminsDelete]
    create_service = update_service = delete_service = None
    object_kwarg = ""

    def _ctx(self) -> dict:
        return {"organization": self.organization, "acting_user": self.request.user}

    def create_kwargs(self) -> dict:
        """Keyword arguments for ``create_service`` beyond the context and the validated
        data (none by default)."""
        return {}

    def perform_create(self, serializer):
        serializer.instance = self.create_service(
            **self._ctx(), **self.create_kwargs(), **serializer.validated_data
        )

    def perform_update(self, serializer):
        serializer.instance = self.update_service(
            **self._ctx(),
            **{self.object_kwarg: serializer.instance},
            **serializer.validated_data,
        )

    def perform_destroy(self, instance):
        self.delete_service(**self._ctx(), **{self.object_kwarg: instance})


class ClientViewSet(_ServiceViewSet):
    """Clients of the active organization. ``?search=`` matches name and email."""

    model = Client
    serializer_class = ClientSerializer
    filterset_class = ClientFilter
    search_fields = ["name", "email"]
    ordering_fields = ["name", "created_at"]
    create_service, update_service, delete_service = (
        staticmethod(services.client_create),
        staticmethod(services.client_update),
        staticmethod(services.client_delete),
    )
    object_kwarg = "client"

    def tenant_queryset(self, organization):
        return selectors.client_list(organization=organization)

    def perform_destroy(self, instance):
        try:
            super().perform_destroy(instance)
        except ProtectedError:
            raise exceptions.ValidationError(
                {"client": ["This client still has cases; delete or reassign them first."]}
            ) from None


class CaseViewSet(_ServiceViewSet):
    """Cases of the active organization. Filters: ``status``, ``client``,
    ``opened_after``, ``opened_before``; ``?search=`` matches title and reference."""

    model = Case
    serializer_class = CaseSerializer
    filterset_class = CaseFilter
    search_fields = ["title", "reference_number"]
    ordering_fields = ["opened_at", "closed_at", "title", "reference_number", "status"]
    create_service, update_service, delete_service = (
        staticmethod(services.case_create),
        staticmethod(services.case_update),
        staticmethod(services.case_delete),
    )
    object_kwarg = "case"

    def tenant_queryset(self, organization):
        return selectors.case_list(organization=organization)


class DocumentViewSet(_ServiceViewSet):
    """Documents of the active organization. Upload with multipart ``file`` and ``case``.

    Each upload creates and bills one document. Retry an upload with the same
    ``Idempotency-Key`` (``billing.idempotency``): the same bytes replay the first answer
    (``201`` with the first document; no second file, row or charge), other bytes are a
    ``422`` (``idempotency_key_reused``)."""

    model = Document

    filterset_class = DocumentFilter
    search_fields = ["original_filename"]
    ordering_fields = ["uploaded_at", "size_bytes", "original_filename"]
    create_service, update_service, delete_service = (
        staticmethod(services.document_create),
        staticmethod(services.document_update),
        staticmethod(services.document_delete),
    )
    object_kwarg = "document"

    def create_kwargs(self) -> dict:
        """The upload request's server id (``request.request_id``, set by
        ``RequestIdMiddleware``), passed explicitly to ``services.document_create``, which
        keeps it in the ``doc.upload`` event's dimensions (the event itself is keyed on
        the document)."""
        return {"request_id": self.request.request_id}

    def initial(self, request, *args, **kwargs):
        """Answer 413 ``file_too_large`` for an upload that ``MaxSizeUploadHandler``
        already stopped while the body was parsed before the view (the
        ``Idempotency-Key`` fingerprint reads multipart bodies with Django's parser)."""
        super().initial(request, *args, **kwargs)
        limit = upload_limit_exceeded(request)
        if limit is not None:
            raise file_too_large(limit)

    def get_parsers(self):
        """An upload (``POST``) is multipart, limited while it streams
        (``cases.uploads.DocumentMultiPartParser``); an update (moving a document to
        another case) is JSON (``core.parsers.BoundedJSONParser``)."""
        request = getattr(self, "request", None)
        if request is not None and request.method == "POST":
            return [DocumentMultiPartParser()]
        return [BoundedJSONParser()]

    def get_serializer_class(self):
        if self.action in ("update", "partial_update"):
            return DocumentUpdateSerializer
        return DocumentSerializer

    def tenant_queryset(self, organization):
        return selectors.document_list(organization=organization)

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The file (Content-Disposition: attachment; the stored "
                "content type; X-Content-Type-Options: nosniff).",
            ),
            302: OpenApiResponse(description="S3 storage: a short-lived presigned URL."),
            404: OpenApiResponse(description="Not found, or file_missing."),
        },
        description="Download the document's file (members of its organization). "
        "Metered as one api.request like any other call.",
    )
    @action(detail=True, methods=["get"], url_path="download")
    def download(self, request, pk=None):
        """``GET /api/v1/documents/{id}/download/``: the file (``cases.downloads``)."""
        return document_download_response(document=self.get_object())
