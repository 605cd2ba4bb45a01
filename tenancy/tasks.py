"""Background jobs of tenancy (procrastinate tasks; the rules are in ``tenancy.jobs``).

``send_invitation`` emails an invitation's link; ``tenancy.invitations.invitation_create``
defers it in the transaction that creates the invitation.
"""

from __future__ import annotations

import smtplib

from procrastinate.contrib.django import app

from tenancy.jobs import tenant_job, transient_retry

#: The queue of email jobs (``manage.py procrastinate worker --queues email``).
EMAIL_QUEUE = "email"


@app.task(
    name="tenancy.send_invitation",
    queue=EMAIL_QUEUE,
    retry=transient_retry(OSError, smtplib.SMTPException),
)
@tenant_job
def send_invitation(organization, *, invitation_id: str) -> str:
    """Job ``send_invitation(organization_id: str, invitation_id: str)``: mint the
    invitation's token and email its link (``tenancy.invitations.invitation_send``); returns
    ``"sent"`` or why nothing was sent (``"used"``, ``"revoked"``, ``"expired"``,
    ``"deleted"``).

    The arguments are ids only: the token is minted here and exists only in the email.
    Retried with exponential backoff when the mail server fails (``OSError``,
    ``smtplib.SMTPException``: connection refused, timeouts, 4xx replies); the failed
    attempt's transaction, and the digest it stored, are rolled back. Safe to run twice: a
    second run mints and sends a new link, which replaces the first.
    """
    from tenancy.invitations import invitation_send

    return invitation_send(organization=organization, invitation_id=invitation_id)
