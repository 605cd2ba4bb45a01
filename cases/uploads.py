"""Document uploads: a size limit enforced while the body streams in, and the file type
taken from the bytes, never from the client.

Size. ``DocumentMultiPartParser`` (the documents view's multipart parser) refuses a
``Content-Length`` over ``DOCUMENT_MAX_BYTES`` plus ``MULTIPART_OVERHEAD_BYTES`` before
reading anything, and puts ``core.parsers.MaxSizeUploadHandler`` in front of Django's
upload handlers: it counts the file bytes of the request and, past ``DOCUMENT_MAX_BYTES``,
stops the upload (Django's ``StopUpload(connection_reset=True)``: nothing more is read
or spooled, the partial temporary file is closed and removed). Either way the answer is
413 ``file_too_large``.

Type (``document_type_detect``). The stored content type is the one detected from the
bytes by the ``filetype`` library (magic numbers of the first 8 KiB; Office Open XML and
OpenDocument by their zip members). A file without a known signature is plain text when
all of it is valid UTF-8 (an optional BOM) without NUL or other C0 control characters
except TAB, LF, FF and CR; anything else is unknown. Refused with 415:

* ``unsupported_file_type``: the detected type (or unknown) is not in
  ``DOCUMENT_ALLOWED_TYPES``;
* ``file_type_mismatch``: the file name's extension or the declared ``Content-Type``
  names an executable or script type (``EXECUTABLE_EXTENSIONS``,
  ``EXECUTABLE_CONTENT_TYPES``), whatever the bytes: such a file could be run by whoever
  downloads it. The extension is read from the name as a download saves it
  (``filename_as_saved``): ``evil.sh `` and ``evil.sh.`` are ``evil.sh``.
"""

import codecs
import mimetypes
import re

import filetype
from django.conf import settings
from rest_framework import exceptions

from core.parsers import BoundedMultiPartParser, PayloadTooLarge

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Bytes of a multipart body beyond its file's (boundaries, part headers, the ``case`` field).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: Bytes ``filetype`` reads (its signatures lie within the first 8 KiB).
SIGNATURE_BYTES = 8192
TEXT_PLAIN = "text/plain"

EXECUTABLE_EXTENSIONS = frozenset(
    "exe dll com scr msi msp cpl sys drv ocx pif bat cmd ps1 psm1 vbs vbe js jse wsf wsh hta "
    "jar apk app dmg pkg deb rpm elf so dylib bin run sh bash zsh csh ksh py pl rb php lnk "
    "reg inf".split()
)
EXECUTABLE_CONTENT_TYPES = frozenset(
    [
        "application/x-msdownload",
        "application/x-dosexec",
        "application/x-msdos-program",
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/x-elf",
        "application/x-mach-binary",
        "application/x-sharedlib",
        "application/x-sh",
        "application/x-shellscript",
        "application/x-bat",
        "application/x-msi",
        "application/x-ms-installer",
        "application/java-archive",
        "application/x-java-archive",
        "application/vnd.android.package-archive",
        "application/javascript",
        "text/javascript",
        "application/x-python",
        "text/x-python",
        "application/x-perl",
        "application/x-httpd-php",
        "application/hta",
        "application/wasm",
    ]
)
#: C0 control characters that plain text may not hold (all but TAB, LF, FF, CR).
_TEXT_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f]")


class UnsupportedFileType(exceptions.APIException):
    """415 Unsupported Media Type (RFC 9110, 15.5.16) for an upload's bytes; ``code``
    ``unsupported_file_type`` or ``file_type_mismatch``."""

    status_code = 415
    default_detail = "This file type is not accepted."
    default_code = "unsupported_file_type"


def max_document_bytes() -> int:
    """``settings.DOCUMENT_MAX_BYTES`` (int, bytes; default 50 MiB)."""
    return int(getattr(settings, "DOCUMENT_MAX_BYTES", DEFAULT_MAX_BYTES))


def allowed_types() -> frozenset[str]:
    """``settings.DOCUMENT_ALLOWED_TYPES`` (MIME types, lower case; its default, PDF, plain
    text, the office formats and the common image types, is in ``goldleaves/settings.py``
    and ``.env.example``)."""
    configured = settings.DOCUMENT_ALLOWED_TYPES
    return frozenset(t.strip().lower() for t in configured if t.strip())


def file_too_large(limit: int) -> PayloadTooLarge:
    """The 413 ``file_too_large`` of an upload over ``limit`` bytes."""
    return PayloadTooLarge(f"File too large: the limit is {limit} bytes.", code="file_too_large")


class DocumentMultiPartParser(BoundedMultiPartParser):
    """The documents view's multipart parser: files up to ``DOCUMENT_MAX_BYTES``, refused
    while streaming (``core.parsers.BoundedMultiPartParser``) with 413 ``file_too_large``."""

    overhead_bytes = MULTIPART_OVERHEAD_BYTES

    def limit(self) -> int:
        return max_document_bytes()

    def too_large(self, limit: int) -> PayloadTooLarge:
        return file_too_large(limit)


_NAME_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def filename_as_saved(name: str) -> str:
    """``name`` (a client's file name) as a download saves it: without control characters
    (a header cannot carry them), surrounding whitespace, or trailing dots and spaces,
    which Windows drops from a name (Microsoft docs, "Naming Files, Paths, and
    Namespaces": "Do not end a file or directory name with a space or a period"), so
    ``"evil.sh "`` and ``"evil.sh."`` are saved as ``"evil.sh"``. The executable check and
    the download's ``Content-Disposition`` both use it; ``""`` when nothing is left."""
    return _NAME_CONTROLS.sub("", name).strip().rstrip(". ").strip()


def _extension(name: str) -> str:
    name = filename_as_saved(name)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _is_plain_text(file) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        for chunk in file.chunks():
            text = decoder.decode(chunk)
            if _TEXT_CONTROLS.search(text):
                return False
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def document_type_detect(file) -> str:
    """The MIME type of an uploaded ``file`` (a Django ``UploadedFile``) from its bytes,
    checked against the rules of the module docstring; the file is left at position 0.

    Returns:
        the detected type (str), one of ``DOCUMENT_ALLOWED_TYPES``.
    Raises:
        UnsupportedFileType: 415 ``file_type_mismatch`` (an executable name or declared
            type) or ``unsupported_file_type`` (a type not allowed, or unknown).
    """
    name = file.name or ""
    declared = (getattr(file, "content_type", "") or "").split(";")[0].strip().lower()
    guessed = (mimetypes.guess_type(filename_as_saved(name))[0] or "").lower()
    if (
        _extension(name) in EXECUTABLE_EXTENSIONS
        or declared in EXECUTABLE_CONTENT_TYPES
        or guessed in EXECUTABLE_CONTENT_TYPES
    ):
        raise UnsupportedFileType(
            "The file name or declared type is of an executable; such files are not accepted.",
            code="file_type_mismatch",
        )
    file.seek(0)
    head = file.read(SIGNATURE_BYTES)
    file.seek(0)
    kind = filetype.guess(head)
    if kind is not None:
        detected = kind.mime.lower()
    elif _is_plain_text(file):
        detected = TEXT_PLAIN
    else:
        detected = ""
    file.seek(0)
    if detected not in allowed_types():
        raise UnsupportedFileType(
            f"File type {detected or 'unknown'} is not accepted; accepted types: "
            f"{', '.join(sorted(allowed_types()))}.",
            code="unsupported_file_type",
        )
    return detected
