"""Billing API (``/api/v1/billing/``): events, usage summary and report, the upcoming
invoice, pipeline health.

Thin views over ``billing.selectors``. The summary and report take an organization
id in the path: the caller must be a member of it (staff: any organization), else
404 (never 403: no enumeration), by ``tenancy.permissions.IsMemberOfTargetOrganization``.
Every billing endpoint needs the ``admin`` or ``owner`` role (``AdminsOnly``; for the
summary and report, the role in the organization of the URL); a member gets 403
``role_forbidden``.
They run inside ``tenant_context`` of THAT organization, so row-level security, when
enabled, applies to the target rows.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import APIException
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import invoice_preview, selectors, usage
from billing.filters import BillingEventFilter
from billing.invoice_serializers import UpcomingInvoiceQuerySerializer, UpcomingInvoiceSerializer
from billing.middleware import write_failures
from billing.models import BillingEvent, MeterReport
from billing.reporting.queue import report_queue
from billing.serializers import (
    REPORT_ROW_SERIALIZERS,
    BillingEventSerializer,
    BillingHealthSerializer,
    MeterReportSerializer,
    PeriodQuerySerializer,
    ReportQuerySerializer,
    UsageReportSerializer,
    UsageSummarySerializer,
)
from tenancy.context import cross_tenant, tenant_context
from tenancy.jobs import job_health
from tenancy.permissions import AdminsOnly, IsMemberOfTargetOrganization
from tenancy.viewsets import TenantAPIMixin

_PERIOD_PARAMS = [
    OpenApiParameter("start", OpenApiTypes.STR, description="YYYY-MM-DD or ISO 8601, inclusive"),
    OpenApiParameter("end", OpenApiTypes.STR, description="YYYY-MM-DD or ISO 8601, exclusive"),
]


class BillingEventListApi(TenantAPIMixin, generics.ListAPIView):
    """``GET events/``: the active organization's billing events, newest first, paginated.
    Filters: ``event_name``, ``status`` (0 pending, 1 posted), ``start``/``end``."""

    model = BillingEvent
    permission_classes = [IsAuthenticated, AdminsOnly]
    serializer_class = BillingEventSerializer
    filterset_class = BillingEventFilter
    search_fields: list = []
    ordering_fields = ["created_at"]

    def tenant_queryset(self, organization):
        return selectors.event_list(organization=organization)


class _UsageApi(TenantAPIMixin, APIView):
    """A period view of the organization named in the URL (``organization_id``), which
    ``IsMemberOfTargetOrganization`` resolves into ``self.target_organization``. Amounts:
    ``billing.usage`` (a plan meter's from the plan's rating)."""

    permission_classes = [IsAuthenticated, IsMemberOfTargetOrganization, AdminsOnly]
    query_serializer_class = PeriodQuerySerializer

    def period_response(self, request, build):
        """Check the query and run ``build`` in the target organization's tenant context:
        ``build(organization, start, end, params) -> dict``."""
        organization = self.target_organization
        query = self.query_serializer_class(
            data=request.query_params, context={"organization": organization}
        )
        with tenant_context(organization):
            query.is_valid(raise_exception=True)
            params = query.validated_data
            if "start" in params:
                start, end = params["start"], params["end"]
            else:
                start, end = selectors.month_period(organization)
            body = {
                "organization": organization.pk,
                "timezone": str(selectors.billing_zone(organization)),
                "start": start,
                "end": end,
            }
            body.update(build(organization, start, end, params))
        return body


class UsageSummaryApi(_UsageApi):
    """``GET usage-summary/<organization_id>/?start=&end=``: totals per event name for the
    half-open period ``[start, end)`` (default: the current month in the organization's
    billing time zone). Cost per line rounded once, half-up, to cents. 404 for an
    organization the caller is not a member of (staff may read any)."""

    @extend_schema(parameters=_PERIOD_PARAMS, responses=UsageSummarySerializer)
    def get(self, request, organization_id):
        def build(organization, start, end, params):
            lines = usage.usage_summary(organization=organization, start=start, end=end)
            return {"lines": lines, "total_cost_cents": sum(line["cost_cents"] for line in lines)}

        body = self.period_response(request, build)
        return Response(UsageSummarySerializer(body).data)


class UsageReportApi(_UsageApi):
    """``GET usage-report/<organization_id>/?start=&end=&group_by=day|route|user``: the
    breakdown per group and event name; same period and access rules as the summary."""

    query_serializer_class = ReportQuerySerializer

    @extend_schema(
        parameters=[
            *_PERIOD_PARAMS,
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(usage.GROUP_BY_CHOICES)),
        ],
        responses=UsageReportSerializer,
    )
    def get(self, request, organization_id):
        def build(organization, start, end, params):
            group_by = params["group_by"]
            rows = usage.usage_report(
                organization=organization, start=start, end=end, group_by=group_by
            )
            serializer = REPORT_ROW_SERIALIZERS[group_by](rows, many=True)
            return {"group_by": group_by, "rows": serializer.data}

        body = self.period_response(request, build)
        return Response(UsageReportSerializer(body).data)


class BillingHealthApi(TenantAPIMixin, APIView):
    """``GET health/``: pending events (count, oldest, its age in seconds), the newest
    posted event, the outbox, this process's metering write failures, and the job queue
    (``tenancy.jobs.job_health``: failed jobs, jobs waiting and the age in seconds of the
    oldest one). Admins and owners see their organization (its jobs: those whose arguments
    carry its id); staff see all organizations and every job (``scope``)."""

    permission_classes = [IsAuthenticated, AdminsOnly]

    @extend_schema(responses=BillingHealthSerializer)
    def get(self, request):
        staff = request.user.is_staff
        if staff:
            # Staff see the pipeline across organizations: the explicit cross-tenant path.
            with cross_tenant(reason="staff billing pipeline health"):
                health = selectors.pipeline_health(organization=None)
            health.update(job_health(organization=None))
        else:
            health = selectors.pipeline_health(organization=self.organization)
            health.update(job_health(organization=self.organization))
        health["scope"] = "all" if staff else "organization"
        health["metering_write_failures"] = write_failures()
        return Response(BillingHealthSerializer(health).data)


class ReportUsageApi(TenantAPIMixin, APIView):
    """``POST report-usage/``: report the active organization's pending usage to Stripe.

    Admins, owners and staff only (403 ``role_forbidden`` otherwise). Returns 202 with the
    report at once: the report and its ``billing.report_usage`` job are written in the
    request's transaction (``billing.reporting.queue.report_queue``) and a job worker runs
    it, never the web process. While a report job of the organization is waiting or running
    (the hourly one included), the POST returns that report instead of queuing another.
    ``GET report-usage/<id>/`` shows its status.
    """

    permission_classes = [IsAuthenticated, AdminsOnly]

    @extend_schema(request=None, responses={202: MeterReportSerializer})
    def post(self, request):
        """Queue a report run for the active organization.

        Returns:
            202 with the ``MeterReport`` (``MeterReportSerializer``; ``status``
            ``queued``, or ``queued``/``running`` for the report already in progress;
            ``id`` for ``GET report-usage/<id>/``). The response never waits for Stripe;
            a run that fails later is recorded on the report (``failed``, ``detail``),
            never as an error of this request, and a run that finds another one (e.g.
            an operator's ``manage.py report_usage``) holding the organization's lock
            ends ``skipped`` (``detail`` says so; that run reports the usage).
        """
        report, _ = report_queue(organization=self.organization, requested_by=request.user)
        return Response(MeterReportSerializer(report).data, status=202)


class ReportUsageDetailApi(TenantAPIMixin, generics.RetrieveAPIView):
    """``GET report-usage/<id>/``: a usage-reporting run of the active organization."""

    model = MeterReport
    permission_classes = [IsAuthenticated, AdminsOnly]
    serializer_class = MeterReportSerializer

    def tenant_queryset(self, organization):
        """The organization's ``MeterReport``s only, so a report of another organization
        is a 404, never a 403 (no enumeration)."""
        return MeterReport.objects.for_organization(organization)


class PlanNotConfigured(APIException):
    """409: ``BILLING_PLANS`` has no plan for the organization's ``plan_tier``."""

    status_code = 409
    default_code = "plan_not_configured"
    default_detail = "No plan is configured for this organization's plan tier."


class UpcomingInvoiceApi(TenantAPIMixin, APIView):
    """``GET upcoming-invoice/[?compare=stripe]``: what the active organization will pay for
    its current billing period (the Stripe subscription's current period when the
    organization has one, else the calendar month in its billing time zone): per meter of
    its plan the quantity used, included, billable, per-tier amounts and the total in
    integer cents, from ``billing.rating`` over the usage recorded here
    (``billing.usage.upcoming_invoice``). Admins and owners (``AdminsOnly``).

    ``?compare=stripe`` adds Stripe's invoice preview for the organization's customer
    (``billing.invoice_preview``) and every difference. Errors (JSON ``{"detail",
    "code"}``): 409 ``stripe_not_configured`` (no ``STRIPE_API_KEY``), 409
    ``stripe_customer_missing`` (no ``stripe_customer_id``; 409, not 400, because the
    request is right and the organization's state is what is missing), 502
    ``stripe_unavailable`` (Stripe answered an error), 409 ``plan_not_configured``, 400
    ``invalid`` for another ``compare``."""

    permission_classes = [IsAuthenticated, AdminsOnly]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "compare",
                OpenApiTypes.STR,
                enum=["stripe"],
                description="stripe: add Stripe's invoice preview and the differences",
            )
        ],
        responses={
            200: UpcomingInvoiceSerializer,
            409: OpenApiTypes.OBJECT,
            502: OpenApiTypes.OBJECT,
        },
    )
    def get(self, request):
        # a plain dict: DRF reads "" from a QueryDict as "not given" (``?compare=`` would
        # be accepted as no comparison); it is a 400 like any other value but "stripe"
        query = UpcomingInvoiceQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        organization = self.organization
        plan = usage.organization_plan(organization)
        if plan is None:
            raise PlanNotConfigured()
        start, end, source = usage.billing_period(organization)
        body = {
            "organization": organization.pk,
            "timezone": str(selectors.billing_zone(organization)),
            "start": start,
            "end": end,
            "period_source": source,
            **usage.upcoming_invoice(organization=organization, plan=plan, start=start, end=end),
        }
        if query.validated_data.get("compare") == "stripe":
            preview = invoice_preview.stripe_preview(
                organization=organization, meters=body["meters"]
            )
            differences = invoice_preview.compare(
                invoice=body, preview=preview, check_period=source == "subscription"
            )
            body.update(stripe=preview, differences=differences, matches_stripe=not differences)
        return Response(UpcomingInvoiceSerializer(body).data)
