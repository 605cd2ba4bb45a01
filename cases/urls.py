from rest_framework.routers import DefaultRouter

from cases import apis

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("clients", apis.ClientViewSet, basename="client")
router.register("cases", apis.CaseViewSet, basename="case")
router.register("documents", apis.DocumentViewSet, basename="document")

urlpatterns = router.urls
