"""Content negotiation of the API: JSON whatever ``Accept`` says.

The API speaks only JSON (``DEFAULT_RENDERER_CLASSES`` is DRF's ``JSONRenderer`` alone;
the browsable API is added only with ``DEBUG``). DRF's ``DefaultContentNegotiation``
answers an ``Accept`` without ``application/json`` (``text/html``, say) with a 406; this
one answers in the first renderer (JSON) instead, as RFC 9110 (12.5.1) allows a server
that cannot satisfy ``Accept``, so a 401 or a 404 is the same JSON error for every client.
A ``?format=`` no renderer has (``?format=api`` without ``DEBUG``) stays DRF's 404, in
JSON.
"""

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation


class JSONContentNegotiation(DefaultContentNegotiation):
    """``DefaultContentNegotiation`` that falls back to the first renderer (JSON) rather
    than raising ``NotAcceptable`` (406). Returns ``(renderer, media_type)``; raises
    ``Http404`` for an unknown ``?format=``."""

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except exceptions.NotAcceptable:
            renderer = renderers[0]
            return renderer, renderer.media_type
