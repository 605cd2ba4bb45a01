"""URLs of the peer variant: ``/api/v1/cases/`` logged by drf-api-tracking, the rest as usual."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter
from rest_framework_tracking.mixins import LoggingMixin

from cases.apis import CaseViewSet
from goldleaves.urls import urlpatterns as project_urlpatterns


class TrackedCaseViewSet(LoggingMixin, CaseViewSet):
    """``CaseViewSet`` with drf-api-tracking's per-request database log (every method)."""


router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("cases", TrackedCaseViewSet, basename="case")

# First match wins: the tracked cases routes shadow the project's, everything else is unchanged.
urlpatterns = [path("api/v1/", include(router.urls)), *project_urlpatterns]
