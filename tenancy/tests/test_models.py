import pytest
from django.db import IntegrityError, transaction

from tenancy.models import User
from tenancy.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_email_is_unique_case_insensitively():
    UserFactory(email="A@x.test")
    with pytest.raises(IntegrityError, match="tenancy_user_email_ci_unique"):
        with transaction.atomic():
            User.objects.create_user(email="a@x.test", password="pw-123456789")
    assert User.objects.filter(email__iexact="a@x.test").count() == 1
    assert User.objects.get_by_natural_key("a@X.TEST").email == "A@x.test"
