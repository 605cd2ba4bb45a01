"""The peer variant of bench/request_overhead.py: the cases API logged by drf-api-tracking.

Bench-only: production settings and URLs are untouched. ``bench.peer.settings``
adds the ``rest_framework_tracking`` app and points ``ROOT_URLCONF`` at
``bench.peer.urls``, which serves ``/api/v1/cases/`` through a subclass of
``cases.apis.CaseViewSet`` with drf-api-tracking's ``LoggingMixin`` (one
``rest_framework_tracking_apirequestlog`` row per request, written through the ORM).
"""
