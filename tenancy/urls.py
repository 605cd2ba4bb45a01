from django.urls import path

from tenancy import apis

urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="token-obtain"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="token-refresh"),
    path("auth/logout/", apis.LogoutApi.as_view(), name="token-logout"),
    path("organizations/", apis.MembershipListApi.as_view(), name="organization-list"),
    path(
        "organizations/current/",
        apis.CurrentOrganizationApi.as_view(),
        name="organization-current",
    ),
]
