from django.urls import path

from tenancy import apis

urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="token-obtain"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="token-refresh"),
    path("auth/logout/", apis.LogoutApi.as_view(), name="token-logout"),
    path(
        "auth/invitations/accept/",
        apis.InvitationAcceptApi.as_view(),
        name="invitation-accept",
    ),
    path("organizations/", apis.MembershipListApi.as_view(), name="organization-list"),
    path(
        "organizations/current/",
        apis.CurrentOrganizationApi.as_view(),
        name="organization-current",
    ),
    path(
        "organizations/current/invitations/",
        apis.InvitationListCreateApi.as_view(),
        name="invitation-list",
    ),
    path(
        "organizations/current/invitations/<uuid:pk>/",
        apis.InvitationRevokeApi.as_view(),
        name="invitation-detail",
    ),
]
