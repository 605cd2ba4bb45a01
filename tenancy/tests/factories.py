import factory

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
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class MembershipFactory(factory.django.DjangoModelFactory):
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
