from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from billing.dashboard import usage_dashboard
from billing.middleware import not_billed
from core.errors import handler404 as api_not_found
from goldleaves.health import health

admin.site.site_header = "Goldleaves administration"
admin.site.site_title = "Goldleaves"  # the <title> suffix: "<page> | Goldleaves"
admin.site.index_title = "Goldleaves administration"

api_v1 = [
    path("", include("tenancy.urls")),
    path("", include("cases.urls")),
    path("billing/", include("billing.urls")),
]

urlpatterns = [
    # The site's root (also the admin's "View site"): the API docs. Not billed (not /api/v1/).
    path("", RedirectView.as_view(pattern_name="swagger-ui", permanent=False), name="root"),
    path("health/", health, name="health"),
    # Staff usage dashboard (billing.dashboard); under /admin/, so on the admin's
    # cross-tenant path (AdminCrossTenantMiddleware) and behind its login.
    path("admin/usage/", admin.site.admin_view(usage_dashboard), name="admin-usage"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema"),
        name="swagger-ui",
    ),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include(api_v1)),
    # No URL serves MEDIA_URL: documents are downloaded through the API only
    # (GET /api/v1/documents/{id}/download/, cases.downloads), by members of their organization.
    # Unknown API paths: JSON 404 even with DEBUG on (no HTML page on an API path). Not a
    # served route, so never billed; still rate limited (tenancy.ratelimit).
    # csrf_exempt: a 404 for every method (Django's CSRF check would answer an unsafe
    # method with its HTML 403 first).
    re_path(r"^api/", csrf_exempt(not_billed(api_not_found)), name="api-not-found"),
]

# With DEBUG (make run): static files (the admin's, the API docs' Swagger UI and Redoc) from
# the apps' static folders, as runserver did; gunicorn serves no files itself. Production
# serves STATIC_ROOT itself (DEPLOY.md). Empty without DEBUG (Django docs, "staticfiles").
if settings.DEBUG:
    urlpatterns += staticfiles_urlpatterns()

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
