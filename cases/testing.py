"""Helpers for tests and benchmarks that upload documents.

Importable from any test module or bench script (``from cases.testing import pdf_bytes``).
"""

import io

from pypdf import PdfWriter


def pdf_bytes(pages: int) -> bytes:
    """A valid PDF of ``pages`` blank US-letter pages (612 x 792 points), as bytes, made
    by pypdf: what an upload of a ``pages``-page document sends."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
