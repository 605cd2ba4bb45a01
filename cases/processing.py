"""Page counting of uploaded documents (the billable unit of ``doc.processed``).

* PDF (recognised by its ``%PDF-`` header, ISO 32000-1 7.5.2, whatever the declared
  content type): the page count of the document's page tree, read with pypdf.
  Encrypted PDFs are opened with the empty user password if they allow it.
* Plain text (declared ``text/*``, or a ``.txt``/``.md``/``.csv`` name), UTF-8: pages
  are separated by form feeds (U+000C); a page longer than ``TEXT_LINES_PER_PAGE``
  (60, a printed page of 10-12 pt text) counts as several. An empty file is an error.
* Anything else cannot be processed (``DocumentProcessingError``).
"""

import math

from pypdf import PdfReader
from pypdf.errors import PyPdfError

TEXT_LINES_PER_PAGE = 60
TEXT_SUFFIXES = (".txt", ".md", ".csv", ".text")


class DocumentProcessingError(ValueError):
    """The document cannot be processed; the message is the reason shown to users."""


def count_text_pages(text: str) -> int:
    """Pages of ``text``: form-feed separated, each at most ``TEXT_LINES_PER_PAGE`` lines."""
    pages = 0
    for page in text.split("\f"):
        lines = len(page.splitlines())
        pages += max(1, math.ceil(lines / TEXT_LINES_PER_PAGE))
    return pages


def count_pages(fileobj, *, content_type: str, filename: str) -> int:
    """Count the pages of an open binary file (positioned anywhere; rewound first).

    Returns:
        the page count (int >= 1).
    Raises:
        DocumentProcessingError: empty, unreadable, not UTF-8 text, a PDF without
            pages or with a password, or an unsupported type.
    """
    fileobj.seek(0)
    head = fileobj.read(1024)
    if not head:
        raise DocumentProcessingError("empty file")
    fileobj.seek(0)
    if head.lstrip()[:5] == b"%PDF-":
        try:
            reader = PdfReader(fileobj)
            if reader.is_encrypted and not reader.decrypt(""):
                raise DocumentProcessingError("password-protected PDF")
            pages = len(reader.pages)
        except DocumentProcessingError:
            raise
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DocumentProcessingError(f"unreadable PDF: {exc}"[:500]) from exc
        if pages < 1:
            raise DocumentProcessingError("PDF has no pages")
        return pages
    if content_type.startswith("text/") or filename.lower().endswith(TEXT_SUFFIXES):
        try:
            text = fileobj.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentProcessingError("text file is not valid UTF-8") from exc
        if not text.strip():
            raise DocumentProcessingError("empty file")
        return count_text_pages(text)
    raise DocumentProcessingError(
        f"unsupported document type {content_type or 'unknown'!r}: only PDF and text are processed"
    )
