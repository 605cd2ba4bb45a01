"""Django admin for clients, cases and documents: staff's cross-tenant view (every
organization's rows, through ``tenancy.middleware.AdminCrossTenantMiddleware``), with an
organization filter and search on every list."""

from django.contrib import admin

from cases.models import Case, Client, Document


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    """Clients of every organization; filter by organization, search name/email/phone."""

    list_display = ["name", "email", "phone", "organization", "created_at"]
    list_filter = ["organization"]
    search_fields = ["name", "email", "phone"]
    list_select_related = ["organization"]


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    """Cases of every organization; filter by organization, status and opened date, search
    reference number, title and client name. ``client`` is a raw id: the admin does not
    check that it belongs to the case's organization; the database's composite
    ``(organization_id, client_id)`` foreign key (``tenancy.rls.policies``) refuses a cross-tenant
    link (``IntegrityError``)."""

    list_display = [
        "reference_number",
        "title",
        "client",
        "status",
        "organization",
        "opened_at",
        "closed_at",
    ]
    list_filter = ["organization", "status", "opened_at"]
    search_fields = ["reference_number", "title", "client__name"]
    list_select_related = ["organization", "client"]
    raw_id_fields = ["client"]
    date_hierarchy = "opened_at"


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    """Documents of every organization; filter by organization, content type and upload
    date, search file name and the case's reference number or title. ``size_bytes`` and
    ``uploaded_at`` are read-only (set at upload)."""

    list_display = [
        "original_filename",
        "case",
        "content_type",
        "size_bytes",
        "organization",
        "uploaded_at",
    ]
    list_filter = ["organization", "content_type", "uploaded_at"]
    search_fields = ["original_filename", "case__reference_number", "case__title"]
    list_select_related = ["organization", "case"]
    raw_id_fields = ["case", "uploaded_by"]
    readonly_fields = ["size_bytes", "uploaded_at"]
