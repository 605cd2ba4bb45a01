"""API pagination: page-number pages with a client-chosen size (``?page_size=``, max 100),
over an order that is always total."""

from django.db.models import QuerySet
from rest_framework import exceptions, pagination


def _term_name(term) -> str | None:
    """The field name of an ``order_by`` term (``"-created_at"`` -> ``"created_at"``), or
    ``None`` for an expression."""
    if isinstance(term, str):
        return term.lstrip("-+")
    return None


def stable_order(queryset):
    """``queryset`` ordered by its own ordering (explicit ``order_by``, else the model's
    ``Meta.ordering``) followed by the primary key, so that no two rows tie.

    LIMIT/OFFSET pages are only consistent over a total order: with ties (rows with the
    same ``created_at``, the same name), PostgreSQL may return the tied rows in a
    different order for each page's query, so a client walking every page sees some rows
    twice and misses others (PostgreSQL manual, 7.6 "LIMIT and OFFSET": "the rows will be
    returned in an unspecified order" unless ORDER BY fixes it). The tiebreaker takes the
    direction of the last term (``-created_at`` -> ``-pk``). A queryset already ending in
    ``pk``/``id``, an unordered queryset, and anything that is not a ``QuerySet`` (a list)
    are returned as they are.
    """
    if not isinstance(queryset, QuerySet) or not queryset.ordered:
        return queryset
    query = queryset.query
    default = queryset.model._meta.ordering if query.default_ordering else []
    terms = list(query.order_by or default)
    if terms and _term_name(terms[-1]) in ("pk", queryset.model._meta.pk.name):
        return queryset
    descending = bool(terms) and isinstance(terms[-1], str) and terms[-1].startswith("-")
    return queryset.order_by(*terms, "-pk" if descending else "pk")


class PageNumberPagination(pagination.PageNumberPagination):
    """``?page=N&page_size=M``; responses are ``{count, next, previous, results}``.

    Every list is paginated over a total order (``stable_order``: its ordering, the
    client's ``?ordering=`` included, then the primary key), so walking all pages
    returns each object exactly once."""

    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request) -> int:
        """``?page_size=`` (an integer 1-``max_page_size``; empty or absent: the default
        ``PAGE_SIZE``). Raises ``ValidationError`` (400) for anything else, rather than
        silently using the default as DRF does."""
        raw = request.query_params.get(self.page_size_query_param, "")
        if raw == "":
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"An integer from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view):
        """DRF's ``page`` and ``page_size`` parameters, with ``page_size``'s bounds and
        ``page`` at least 1."""
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
            elif parameter["name"] == self.page_query_param:
                parameter["schema"].update(minimum=1)
        return parameters

    def paginate_queryset(self, queryset, request, view=None):
        """DRF's page of ``stable_order(queryset)`` (see the class doc)."""
        return super().paginate_queryset(stable_order(queryset), request, view)
