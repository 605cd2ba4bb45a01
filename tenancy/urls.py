from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from tenancy import apis

urlpatterns = [
    path("auth/token/", TokenObtainPairView.as_view(), name="token-obtain"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("organizations/", apis.MembershipListApi.as_view(), name="organization-list"),
    path(
        "organizations/current/",
        apis.CurrentOrganizationApi.as_view(),
        name="organization-current",
    ),
]
