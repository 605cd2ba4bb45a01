import factory

from cases.models import Case, Client
from tenancy.tests.factories import OrganizationFactory, TenantFactory


class ClientFactory(TenantFactory):
    class Meta:
        model = Client

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Client {n}")
    email = factory.Sequence(lambda n: f"client{n}@example.test")


class CaseFactory(TenantFactory):
    class Meta:
        model = Case

    organization = factory.SubFactory(OrganizationFactory)
    client = factory.SubFactory(ClientFactory, organization=factory.SelfAttribute("..organization"))
    title = factory.Sequence(lambda n: f"Matter {n}")
    reference_number = factory.Sequence(lambda n: f"REF-{n:05d}")
