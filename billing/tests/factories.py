import factory
from django.utils import timezone

from billing.models import BillingEvent, UsageAggregate
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


class UsageAggregateFactory(factory.django.DjangoModelFactory):
    """A pending Stripe outbox row (``api.request`` -> ``api_requests``, value 1) for the
    current UTC hour; give ``sequence`` (or ``period_start``) to make several."""

    class Meta:
        model = UsageAggregate

    organization = factory.SubFactory(OrganizationFactory)
    event_name = "api.request"
    meter_event_name = "api_requests"
    period_start = factory.LazyFunction(
        lambda: timezone.now().replace(minute=0, second=0, microsecond=0)
    )
    sequence = factory.Sequence(lambda n: n + 1)
    value = 1
    identifier = factory.LazyAttribute(
        lambda o: f"gl-{o.organization.pk}-{o.meter_event_name}-{o.sequence}"
    )


def flat_prices(plans: dict, cents: dict[str, str]) -> dict:
    """A copy of ``plans`` (a ``BILLING_PLANS`` value) where, in every plan, each meter named
    in ``cents`` (``{event name: cents per unit, a decimal string}``) costs that flat price:
    nothing included, one open tier. For ``settings.BILLING_PLANS = flat_prices(...)``."""
    flat = {}
    for tier, plan in plans.items():
        meters = dict(plan["meters"])
        for name, price in cents.items():
            meters[name] = {
                "stripe_price_id": "",
                "included": "0",
                "tiers": [{"up_to": None, "unit_amount_decimal": price}],
            }
        flat[tier] = {**plan, "meters": meters}
    return flat
