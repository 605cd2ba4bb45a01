from django.urls import path

from billing import apis
from billing.stripe_sync import apis as stripe_apis

urlpatterns = [
    path("events/", apis.BillingEventListApi.as_view(), name="billing-events"),
    path(
        "usage-summary/<uuid:organization_id>/",
        apis.UsageSummaryApi.as_view(),
        name="billing-usage-summary",
    ),
    path(
        "usage-report/<uuid:organization_id>/",
        apis.UsageReportApi.as_view(),
        name="billing-usage-report",
    ),
    path("health/", apis.BillingHealthApi.as_view(), name="billing-health"),
    path("upcoming-invoice/", apis.UpcomingInvoiceApi.as_view(), name="billing-upcoming-invoice"),
    path("report-usage/", apis.ReportUsageApi.as_view(), name="billing-report-usage"),
    path(
        "report-usage/<uuid:pk>/",
        apis.ReportUsageDetailApi.as_view(),
        name="billing-report-usage-detail",
    ),
    path("subscription/", stripe_apis.SubscriptionApi.as_view(), name="billing-subscription"),
    path("stripe/webhook/", stripe_apis.stripe_webhook_view, name="billing-stripe-webhook"),
]
