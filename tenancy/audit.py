"""Audited staff access: every Django admin request made under ``cross_tenant`` writes one
``StaffAccess`` row in that request's transaction.

``AdminCrossTenantMiddleware`` (``tenancy.middleware``) calls ``staff_access_begin`` before
the admin view runs (inside ``cross_tenant``, so it can still read the organization of an
object about to be deleted) and ``staff_access_record`` after it, in the same
transaction: the row commits with the access, and a request rolled back (a 5xx) leaves
neither. What was done is read from the admin URL's name (Django admin, "Reversing admin
URLs": ``<app>_<model>_changelist`` / ``_change`` / ``_delete`` / ``_history`` / ``_add``,
``autocomplete``), so every registered ``ModelAdmin`` is covered without code of its own:

* list pages (changelist, autocomplete) -> ``view_list``, with the ids and organizations
  of the rows rendered on the page;
* an object's page (GET of change, delete confirmation, history) -> ``view_object``;
* a POST to add or change -> ``change``; a POST to delete -> ``delete``;
* a changelist action on selected rows -> ``delete`` for ``delete_selected`` once
  confirmed, ``export`` for an action whose name starts with ``export``, else ``change``;
* any other admin page (index, password change) -> ``other``.

The organizations touched come from each row's ``organization_id`` (tenant models and
``User``'s default organization), or the row's own id for ``Organization``.
"""

import json
import logging
from dataclasses import dataclass, field

from django.apps import apps
from django.core.exceptions import ValidationError
from django.urls import Resolver404, resolve

from tenancy.context import cross_tenant_reason
from tenancy.models import Organization, StaffAccess, StaffAccessAction

logger = logging.getLogger(__name__)

_PAGES = ("changelist", "add", "change", "delete", "history")
#: Upper bound of ids kept per row (a changelist page holds list_per_page rows, 100 by default).
MAX_IDS = 500


@dataclass
class AdminAccess:
    """What one admin request is about: ``action`` (``StaffAccessAction``), ``model``
    (``app_label.model_name`` or ``''``), ``object_ids`` (str) and ``organization_ids``."""

    action: str
    model: str = ""
    model_class: type | None = None
    object_ids: list[str] = field(default_factory=list)
    organization_ids: set = field(default_factory=set)


def _model_of(app_label: str, model_name: str):
    try:
        return apps.get_model(app_label, model_name)
    except LookupError:
        return None


def _organization_column(model) -> str | None:
    if model is None:
        return None
    if issubclass(model, Organization):
        return "pk"
    names = {f.attname for f in model._meta.concrete_fields}
    return "organization_id" if "organization_id" in names else None


def organizations_of(model, ids) -> set:
    """The organization ids (UUID) of the rows of ``model`` whose primary keys are ``ids``
    (read now, in the caller's transaction): empty for a model without an organization."""
    column = _organization_column(model)
    if column is None or not ids:
        return set()
    try:
        rows = model._base_manager.filter(pk__in=list(ids)[:MAX_IDS]).values_list(column, flat=True)
        return {org for org in rows if org is not None}
    except (ValueError, TypeError, ValidationError):  # not an id of this model (bad URL)
        return set()


def _from_url(request) -> AdminAccess:
    """The action, model and object id named by the admin URL of ``request``."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return AdminAccess(StaffAccessAction.OTHER)
    name = match.url_name or ""
    if name == "autocomplete":
        app_label, model_name = request.GET.get("app_label", ""), request.GET.get("model_name", "")
        model = _model_of(app_label, model_name)
        return AdminAccess(StaffAccessAction.VIEW_LIST, f"{app_label}.{model_name}", model)
    for page in _PAGES:
        if name.endswith("_" + page):
            model_part = name[: -len(page) - 1]
            model = next(
                (
                    m
                    for m in apps.get_models()
                    if f"{m._meta.app_label}_{m._meta.model_name}" == model_part
                ),
                None,
            )
            if model is None:
                break
            label = f"{model._meta.app_label}.{model._meta.model_name}"
            object_id = match.kwargs.get("object_id")
            ids = [str(object_id)] if object_id is not None else []
            post = request.method == "POST"
            if page == "changelist":
                action = _changelist_action(request) if post else StaffAccessAction.VIEW_LIST
                if post:
                    ids = [str(i) for i in request.POST.getlist("_selected_action")][:MAX_IDS]
            elif page in ("add", "change"):
                action = StaffAccessAction.CHANGE if post else StaffAccessAction.VIEW_OBJECT
            elif page == "delete":
                action = StaffAccessAction.DELETE if post else StaffAccessAction.VIEW_OBJECT
            else:
                action = StaffAccessAction.VIEW_OBJECT
            return AdminAccess(action, label, model, ids)
    return AdminAccess(StaffAccessAction.OTHER)


def _changelist_action(request) -> str:
    name = request.POST.get("action", "")
    if not request.POST.getlist("_selected_action"):
        return StaffAccessAction.CHANGE  # list_editable save
    if name == "delete_selected":
        return StaffAccessAction.DELETE if request.POST.get("post") else StaffAccessAction.VIEW_LIST
    if name.startswith("export"):
        return StaffAccessAction.EXPORT
    return StaffAccessAction.CHANGE


def staff_access_begin(request) -> AdminAccess:
    """Read what the admin request ``request`` is about before its view runs (so the
    organization of an object about to be deleted is still there). Call inside
    ``cross_tenant``. Returns an ``AdminAccess`` for ``staff_access_record``."""
    access = _from_url(request)
    access.organization_ids |= organizations_of(access.model_class, access.object_ids)
    return access


def _rendered_rows(response) -> list:
    """The rows a changelist response showed (its rendered context), else ``[]``."""
    context = getattr(response, "context_data", None) or {}
    changelist = context.get("cl")
    return list(changelist.result_list) if changelist is not None else []


def _autocomplete_ids(response) -> list[str]:
    """The ids in an admin autocomplete answer (``{"results": [{"id": ...}, ...]}``)."""
    if response.get("Content-Type", "").split(";")[0] != "application/json":
        return []
    try:
        results = json.loads(response.content).get("results") or []
        return [str(item["id"]) for item in results if "id" in item][:MAX_IDS]
    except (ValueError, AttributeError, TypeError):
        return []


def staff_access_record(*, request, response, access: AdminAccess) -> StaffAccess:
    """Write the ``StaffAccess`` row of an admin request, in its transaction (call inside
    the same ``cross_tenant`` block as ``staff_access_begin``, after the view). Adds the
    rows a list page rendered and, for autocomplete, the ids in its JSON answer. Logs
    one INFO line (staff user, action, model, organizations, reason).

    Returns:
        StaffAccess: the row written.
    """
    if access.action == StaffAccessAction.VIEW_LIST and not access.object_ids:
        rows = _rendered_rows(response)
        column = _organization_column(access.model_class)
        if rows:
            access.object_ids = [str(row.pk) for row in rows][:MAX_IDS]
            if column == "pk":
                access.organization_ids |= {row.pk for row in rows}
            elif column:
                access.organization_ids |= {r.organization_id for r in rows if r.organization_id}
        else:
            access.object_ids = _autocomplete_ids(response)
            access.organization_ids |= organizations_of(access.model_class, access.object_ids)
    user = request.user
    reason = cross_tenant_reason() or "unspecified"
    row = StaffAccess.objects.create(
        staff_user_id=user.pk,
        staff_email=getattr(user, "email", "")[:254],
        action=access.action,
        model=access.model[:200],
        object_id=access.object_ids[0][:200] if len(access.object_ids) == 1 else "",
        object_ids=access.object_ids,
        organization_ids=sorted(access.organization_ids, key=str),
        request_id=getattr(request, "request_id", "")[:64],
        method=request.method[:10],
        path=request.get_full_path()[:2000],
        status_code=response.status_code,
        reason=reason[:200],
    )
    logger.info(
        "staff access: %s %s %s %s organizations=%s reason=%r",
        row.staff_email,
        row.action,
        row.model or row.path,
        row.object_id or "-",
        ",".join(str(o) for o in row.organization_ids) or "-",
        reason,
    )
    return row
