"""API pagination: page-number pages with a client-chosen size (``?page_size=``, max 100)."""

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """``?page=N&page_size=M``; responses are ``{count, next, previous, results}``."""

    page_size_query_param = "page_size"
    max_page_size = 100
