"""OpenAPI generation (drf-spectacular): one tag per API resource.

``TaggedAutoSchema`` is the project's ``DEFAULT_SCHEMA_CLASS``. It tags an operation
by the first segment of its path after the version (``/api/v1/cases/{id}/`` ->
``cases``), matched case-insensitively against the names in
``SPECTACULAR_SETTINGS["TAGS"]`` (``"Cases"``), so a new endpoint under an existing
resource lands under its tag without any decorator. A segment with no declared tag
gets its title-cased self. ``extend_schema(tags=[...])`` on a view still wins.
"""

import re

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.settings import spectacular_settings

_VERSION = re.compile(r"^v\d+$")


def path_resource(path: str) -> str | None:
    """The resource segment of an API path: the first segment after ``api`` and a
    version segment (``v1``), without path parameters; ``None`` if there is none.

    >>> path_resource("/api/v1/billing/usage-summary/{organization_id}/")
    'billing'
    """
    segments = [s for s in path.strip("/").split("/") if s and not s.startswith("{")]
    if segments and segments[0] == "api":
        segments = segments[1:]
    if segments and _VERSION.match(segments[0]):
        segments = segments[1:]
    return segments[0] if segments else None


class TaggedAutoSchema(AutoSchema):
    """drf-spectacular's ``AutoSchema`` with resource tags (see the module docstring)."""

    def get_tags(self) -> list[str]:
        """``[tag name]`` for this operation's path (str list of one element)."""
        resource = path_resource(self.path)
        if resource is None:
            return super().get_tags()
        declared = {tag["name"].lower(): tag["name"] for tag in spectacular_settings.TAGS}
        return [declared.get(resource.lower(), resource.replace("-", " ").title())]
