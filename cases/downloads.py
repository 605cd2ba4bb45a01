"""Document downloads: the file of a document, to a member of its organization only.

Media is never served publicly: no URL pattern serves ``MEDIA_URL`` (``goldleaves/urls.py``),
and the only way to a document's bytes is ``GET /api/v1/documents/{id}/download/``, behind
the tenant API's authentication, role check and tenant-scoped lookup (another
organization's document is a 404). Two ways, chosen by the default storage:

* local files (``FileSystemStorage``): the bytes are streamed by Django's ``FileResponse``
  (chunks of ``FileResponse.block_size``, 4 KiB; the file is never read whole);
* S3 (django-storages' ``S3Storage``): a ``302`` to a presigned ``GET`` URL that expires
  after ``DOCUMENT_URL_EXPIRE_SECONDS`` (S3 presigned URLs, AWS docs "Sharing objects
  with presigned URLs"), with ``response-content-disposition`` and
  ``response-content-type`` so that S3 answers with the same headers. Signing is local
  (botocore): no request to S3 is made here.

Headers of both: ``Content-Disposition: attachment`` with the original file name, encoded
per RFC 6266 and RFC 5987 (``filename*=utf-8''...`` for non-ASCII names; Django's
``content_disposition_header``), the stored content type when it is a well-formed media
type (else ``application/octet-stream``), ``X-Content-Type-Options: nosniff`` and a
``Content-Security-Policy`` that runs nothing (the name and type came from the uploader).
"""

from __future__ import annotations

import re

from django.conf import settings
from django.http import FileResponse, HttpResponseRedirect
from django.utils.http import content_disposition_header
from rest_framework.exceptions import NotFound

from cases.models import Document
from cases.uploads import filename_as_saved

#: ``type/subtype`` (RFC 6838, 4.2 restricted names), parameters dropped.
_MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$"
)
FALLBACK_CONTENT_TYPE = "application/octet-stream"
#: What the browser may run in a downloaded file opened inline by mistake: nothing.
DOWNLOAD_CSP = "default-src 'none'; sandbox"


class FileMissing(NotFound):
    """404 ``file_missing``: the document exists but its file is gone from storage."""

    default_detail = "The document's file is missing from storage."
    default_code = "file_missing"


def download_content_type(document: Document) -> str:
    """The stored content type without parameters if it is a well-formed media type,
    else ``application/octet-stream`` (the client declared it at upload)."""
    value = (document.content_type or "").split(";", 1)[0].strip()
    return value if _MEDIA_TYPE.match(value) else FALLBACK_CONTENT_TYPE


def download_filename(document: Document) -> str:
    """The original file name as a download saves it (``cases.uploads.filename_as_saved``:
    no control characters, no trailing dots or spaces), ``"document"`` if nothing is
    left: the name the upload's executable check judged."""
    return filename_as_saved(document.original_filename or "") or "document"


def _is_s3(storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # pragma: no cover - django-storages is a requirement
        return False
    return isinstance(storage, S3Storage)


def document_download_response(*, document: Document):
    """The response of ``GET /api/v1/documents/{id}/download/`` for ``document`` (already
    read through the tenant-scoped queryset): a ``FileResponse`` (200, streamed) or, with
    S3 storage, a ``302`` to a presigned URL valid ``DOCUMENT_URL_EXPIRE_SECONDS``.

    Raises:
        FileMissing: 404 ``file_missing`` when the local file is gone (``OSError`` on
            open: missing, unreadable).
    """
    filename = download_filename(document)
    content_type = download_content_type(document)
    storage = document.file.storage
    if _is_s3(storage):
        url = storage.url(
            document.file.name,
            parameters={
                "ResponseContentDisposition": content_disposition_header(True, filename),
                "ResponseContentType": content_type,
            },
            expire=settings.DOCUMENT_URL_EXPIRE_SECONDS,
        )
        response = HttpResponseRedirect(url)
        response["Cache-Control"] = "private, no-store"
    else:
        try:
            handle = document.file.open("rb")
        except OSError:
            raise FileMissing from None
        response = FileResponse(
            handle, as_attachment=True, filename=filename, content_type=content_type
        )
        response["Cache-Control"] = "private, no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = DOWNLOAD_CSP
    return response
