"""Strict text fields for request bodies.

DRF's ``CharField`` turns a JSON number into text (``{"phone": 39563}`` is stored as
``"39563"``), so a body that breaks its own schema (``type: string``) would be accepted.
``StrictModelSerializer`` maps the model's text fields to fields that refuse anything but
a JSON string: 400 ``{"phone": ["Not a valid string."]}``. Multipart and form values are
always strings, so uploads are unaffected.
"""

from django.db import models
from rest_framework import serializers


class StrictStringMixin:
    """Refuse a value that is not a ``str`` (DRF's ``invalid``: "Not a valid string.")
    before the field's own conversion."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(StrictStringMixin, serializers.CharField):
    """A ``CharField`` that takes only strings."""


class StrictEmailField(StrictStringMixin, serializers.EmailField):
    """An ``EmailField`` that takes only strings."""


class StrictModelSerializer(serializers.ModelSerializer):
    """A ``ModelSerializer`` whose ``CharField``, ``TextField`` and ``EmailField`` model
    fields become strict string fields (see the module docstring)."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.EmailField: StrictEmailField,
    }
