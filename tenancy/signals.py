"""Signal receivers that revoke refresh tokens when a user loses access.

A user's deletion and the removal of one of their memberships blacklist every outstanding
refresh token of the user (``tenancy.tokens.revoke_refresh_tokens``), in the transaction
of the delete. Password changes and deactivations revoke in ``User.save``. Access tokens
need no revocation here: ``TenantMiddleware`` reads the membership on every request, so
a token naming an organization the user no longer belongs to is refused (403), and a
deleted user's token is a 401 (``user_not_found``).
"""

from django.db.models.signals import post_delete, pre_delete
from django.dispatch import Signal

from tenancy.models import Membership, User
from tenancy.tokens import revoke_refresh_tokens

#: Sent by ``tenancy.services.organization_onboard`` for a NEW organization, inside the
#: onboarding transaction, after its owner membership was written: ``sender`` the
#: ``Organization`` class, ``organization`` the new row, ``plan_tier`` its tier. The hook of
#: higher layers (billing defers the job that creates the Stripe customer and subscription,
#: in this same transaction). A receiver may return a ``str``: one line for the operator,
#: shown by ``onboard_tenant`` (``OnboardResult.notes``). A receiver must not call an outside
#: service: onboarding never waits for, or fails because of, one.
organization_onboarded = Signal()


def _user_deleted(sender, instance, **kwargs):
    # pre_delete: the outstanding tokens still point at the user (their FK is SET_NULL).
    revoke_refresh_tokens(user_id=instance.pk)


def _membership_removed(sender, instance, **kwargs):
    revoke_refresh_tokens(user_id=instance.user_id)


def connect_signals() -> None:
    """Connect the receivers (``TenancyConfig.ready``); idempotent (dispatch uids)."""
    pre_delete.connect(_user_deleted, sender=User, dispatch_uid="tenancy.revoke_on_user_delete")
    post_delete.connect(
        _membership_removed, sender=Membership, dispatch_uid="tenancy.revoke_on_membership_delete"
    )
