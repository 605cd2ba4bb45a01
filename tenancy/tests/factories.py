import factory

from tenancy.context import tenant_context
from tenancy.models import Membership, MembershipRole, Organization, User

PASSWORD = "correct-horse-battery"


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Firm {n}")
    slug = factory.Sequence(lambda n: f"firm-{n}")
    plan_tier = "pro"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.test")
    # hashed before the first save: a password set on a saved user is a password change
    # (it revokes the user's tokens, User.save)
    password = factory.django.Password(PASSWORD)


class TenantFactory(factory.django.DjangoModelFactory):
    """Base factory of tenant-owned models: creates the row inside the tenant context of
    its organization, so it works with row-level security enforced (RLS_ENABLED=true)."""

    class Meta:
        abstract = True

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        organization = kwargs.get("organization")
        if organization is None:
            return super()._create(model_class, *args, **kwargs)
        with tenant_context(organization):
            return super()._create(model_class, *args, **kwargs)


class MembershipFactory(TenantFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = MembershipRole.OWNER


def member_of(organization, *, role=MembershipRole.OWNER, **user_fields) -> User:
    """A new user whose default organization is ``organization``, with a membership."""
    user = UserFactory(organization=organization, **user_fields)
    MembershipFactory(organization=organization, user=user, role=role)
    return user
