import factory
from django.utils import timezone

from billing.models import BillingEvent
from tenancy.tests.factories import OrganizationFactory


class BillingEventFactory(factory.django.DjangoModelFactory):
    """An ``api.request`` event of 1 call at 1 cent, created now; override freely."""

    class Meta:
        model = BillingEvent

    organization = factory.SubFactory(OrganizationFactory)
    event_type = "api"
    event_name = "api.request"
    request_id = factory.Sequence(lambda n: f"req-{n:08d}")
    quantity = 1
    unit = "call"
    unit_cost_cents = 1
    created_at = factory.LazyFunction(timezone.now)
