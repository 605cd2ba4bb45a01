"""Admin building blocks shared by the apps."""

from django.contrib import admin


class AllFieldsReadOnlyMixin:
    """For a ``ModelAdmin``: its change page shows every field of the model (the
    non-editable ones too, such as ``created_at``), none of them editable."""

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """A model admin whose rows staff can list, filter and open but never add, change or
    delete: for records of what happened (billing events, Stripe's answers, the staff
    access log), which the app alone writes."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
