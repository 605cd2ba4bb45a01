"""Stripe webhooks: verify, store once, answer; process in a job.

``POST /api/v1/billing/stripe/webhook/`` (``apis.StripeWebhookApi``) calls
``webhook_receive``: the ``Stripe-Signature`` header is verified with stripe-python's
``WebhookSignature.verify_header`` (HMAC-SHA256 of ``"<timestamp>.<body>"``, and the
timestamp within ``STRIPE_WEBHOOK_TOLERANCE_SECONDS``, default 300, of now: Stripe docs,
"Check the webhook signatures") against ``STRIPE_WEBHOOK_SECRET``: one secret, or several
separated by commas (each Stripe endpoint or event destination has its own; a delivery
must verify with one). The body must be a JSON event (``id``, ``type``, ``created``,
``data.object``; a v2 thin event has no ``data.object``), and the event is stored once by
its id (``StripeWebhookEvent.stripe_event_id`` is unique): a redelivery is acknowledged
and changes nothing. The first delivery defers ``billing.stripe_webhook_process`` in the
same transaction, so the answer never waits for processing (Stripe docs: "Quickly return
a 2xx response").

``webhook_process`` (the job) acts per type:

* ``customer.subscription.created`` / ``updated`` / ``deleted``: the organization mirrors
  the subscription (``subscriptions.subscription_apply``): from the payload, ordered by the
  event's ``created``; with ``STRIPE_API_KEY`` set, from the subscription fetched from
  Stripe at that moment (the current state, whatever order events came in).
* ``invoice.paid`` / ``invoice.payment_failed``: recorded on the event (amounts in cents,
  attempt count); with ``STRIPE_API_KEY`` the subscription is fetched and applied (Stripe
  moves its status on payment outcomes and says so in ``customer.subscription.updated``).
* ``billing.meter.error_report_triggered`` (Stripe rejected meter events): flagged for
  staff (``needs_attention``) and logged at ERROR.
* any other type: stored and acknowledged (``ignored``).

An event whose customer matches no organization (``stripe_customer_id``, or the
``metadata.organization_id`` we set on customers and subscriptions) is stored, logged,
flagged and acknowledged (``unmatched``).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.stripe_sync.models import StripeWebhookEvent, WebhookEventStatus
from billing.stripe_sync.subscriptions import from_timestamp, subscription_apply
from tenancy.models import Organization

logger = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
#: Stripe sends it as a v2 "thin" event (``v1.billing.meter.error_report_triggered``, body
#: ``object: "v2.core.event"``, ``created`` an ISO 8601 string, ``related_object`` the
#: meter, ``data.reason`` the error types; Stripe API v2 reference, "Types of events");
#: both spellings are accepted.
METER_ERROR_EVENTS = frozenset(
    {"billing.meter.error_report_triggered", "v1.billing.meter.error_report_triggered"}
)


class WebhookRejected(Exception):
    """A delivery answered 400 (nothing stored): ``code`` is the JSON error's code
    (``webhook_not_configured``, ``signature_missing``, ``signature_invalid``,
    ``payload_malformed``)."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


def webhook_verify(*, payload: bytes, signature: str | None) -> dict:
    """Verify a delivery and parse its event.

    Args:
        payload: the request body, unmodified (the signature covers its exact bytes).
        signature: the ``Stripe-Signature`` header, or None.
    Returns:
        The event as a dict (``id``: str, ``type``: str, ``created``: int Unix seconds,
        ``data.object``: dict).
    Raises:
        WebhookRejected: no secret configured, no or a bad signature, a timestamp outside
            the tolerance, or a body that is not a Stripe event.
    """
    import stripe

    secrets = [x.strip() for x in settings.STRIPE_WEBHOOK_SECRET.split(",") if x.strip()]
    if not secrets:
        raise WebhookRejected(
            "Stripe webhooks are off: STRIPE_WEBHOOK_SECRET is not set.",
            code="webhook_not_configured",
        )
    if not signature:
        raise WebhookRejected("No Stripe-Signature header.", code="signature_missing")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("The body is not UTF-8.", code="payload_malformed") from None
    failure = None
    for secret in secrets:  # one per Stripe destination (snapshot and thin events)
        try:
            stripe.WebhookSignature.verify_header(
                text, signature, secret, settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as exc:
            failure = exc
            continue
        failure = None
        break
    if failure is not None:
        raise WebhookRejected(
            f"Stripe-Signature does not verify: {failure.user_message or failure}",
            code="signature_invalid",
        )
    try:
        event = json.loads(text)
    except ValueError:
        raise WebhookRejected("The body is not JSON.", code="payload_malformed") from None
    if not _is_event(event):
        raise WebhookRejected(
            "The body is not a Stripe event (id, type, created, data.object).",
            code="payload_malformed",
        )
    return event


def event_created(event: dict) -> datetime | None:
    """An event's ``created`` as an aware UTC datetime: Unix seconds (snapshot events) or
    an ISO 8601 string (v2 thin events); None when it is neither."""
    created = event.get("created")
    if isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 2**37:
        return from_timestamp(created)
    if isinstance(created, str):
        try:
            parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    return None


def _is_event(event) -> bool:
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and 0 < len(event["id"]) <= 255
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 100
        and event_created(event) is not None
        and isinstance(event.get("data", {}), dict)
    ):
        return False
    thin = event.get("object") == "v2.core.event"
    return thin or isinstance(event.get("data", {}).get("object"), dict)


@dataclass(frozen=True)
class Received:
    """``webhook_receive``'s answer: the stored event, and whether this delivery stored it
    (False: a redelivery, acknowledged without change)."""

    event: StripeWebhookEvent
    created: bool


def webhook_receive(*, payload: bytes, signature: str | None) -> Received:
    """Verify (``webhook_verify``), store the event once by its id and, the first time,
    defer its processing job in the same transaction. Raises ``WebhookRejected``."""
    from billing.stripe_sync.tasks import webhook_process_job

    event = webhook_verify(payload=payload, signature=signature)
    with transaction.atomic():
        stored, created = StripeWebhookEvent.objects.get_or_create(
            stripe_event_id=event["id"],
            defaults={
                "event_type": event["type"],
                "livemode": bool(event.get("livemode")),
                "stripe_created_at": event_created(event),
                "payload": event,
            },
        )
        if created:
            webhook_process_job.defer(event_pk=stored.pk)
    if not created:
        logger.info(
            "Stripe event %s (%s) redelivered: unchanged", stored.stripe_event_id, stored.event_type
        )
    return Received(stored, created)


def organization_for_customer(*, customer_id: str, metadata: dict | None) -> Organization | None:
    """The organization of a Stripe customer: the one whose ``stripe_customer_id`` it is,
    else the one named by ``metadata["organization_id"]`` (set by us on customers and
    subscriptions, and covered by the signature) that has no customer yet or this one; its
    ``stripe_customer_id`` is then saved (a webhook may come before the onboarding job
    recorded it). None: no organization."""
    if customer_id:
        org = Organization.objects.filter(stripe_customer_id=customer_id).first()
        if org is not None:
            return org
    try:
        org_id = uuid.UUID(str((metadata or {}).get("organization_id")))
    except ValueError:
        return None
    org = Organization.objects.filter(pk=org_id, stripe_customer_id__in=["", customer_id]).first()
    if org is not None and customer_id and not org.stripe_customer_id:
        Organization.objects.filter(pk=org.pk, stripe_customer_id="").update(
            stripe_customer_id=customer_id
        )
        org.refresh_from_db()
    return org


def _id(value) -> str:
    """A Stripe reference as an id: a string, or an expanded object's ``id``."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _invoice_subscription(invoice: dict) -> str:
    """The invoice's subscription id: ``subscription`` (API versions before 2025-03-31)
    or ``parent.subscription_details.subscription``."""
    if invoice.get("subscription"):
        return _id(invoice["subscription"])
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return _id(details.get("subscription"))


def _finish(event: StripeWebhookEvent, status: str, detail: str, **fields) -> bool:
    """Record the outcome if the event is still ``received`` (a conditional update: a job
    run twice records once). Returns whether this call recorded it."""
    return bool(
        StripeWebhookEvent.objects.filter(pk=event.pk, status=WebhookEventStatus.RECEIVED).update(
            status=status, detail=detail[:2000], processed_at=timezone.now(), **fields
        )
    )


def _fetch_subscription(sub_id: str) -> tuple[dict, datetime] | None:
    """The subscription as Stripe has it now, and now (UTC); None when Stripe answers 404
    (no such subscription in this account or mode): the payload is used instead."""
    import stripe

    from billing.reporting.stripe_api import stripe_client

    fetched_at = timezone.now()
    try:
        return stripe_client().v1.subscriptions.retrieve(sub_id).to_dict(), fetched_at
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            logger.warning("subscription %s: Stripe has no such subscription (404)", sub_id)
            return None
        raise


def webhook_process(*, event_pk: int) -> str:
    """Process a stored event (the job; the rules are in the module doc). Safe to run
    twice: an event no longer ``received`` is left alone, and applying a subscription is
    ordered by its instant. Returns the event's final status. Raises ``stripe.StripeError``
    when fetching from Stripe fails (the job retries transient errors)."""
    event = StripeWebhookEvent.objects.filter(pk=event_pk).first()
    if event is None or event.status != WebhookEventStatus.RECEIVED:
        return event.status if event is not None else "deleted"
    kind = event.event_type
    if kind in METER_ERROR_EVENTS:
        detail = _meter_error_detail(event.payload)
        logger.error("Stripe rejected meter events (event %s): %s", event.stripe_event_id, detail)
        _finish(event, WebhookEventStatus.PROCESSED, detail, needs_attention=True)
        return WebhookEventStatus.PROCESSED
    obj = (event.payload.get("data") or {}).get("object") or {}
    if kind not in SUBSCRIPTION_EVENTS | INVOICE_EVENTS:
        _finish(event, WebhookEventStatus.IGNORED, f"type {kind} is not acted on")
        return WebhookEventStatus.IGNORED
    customer_id = _id(obj.get("customer"))
    metadata = obj.get("metadata") if kind in SUBSCRIPTION_EVENTS else None
    metadata = metadata if isinstance(metadata, dict) else None
    organization = organization_for_customer(customer_id=customer_id, metadata=metadata)
    if organization is None:
        logger.warning(
            "Stripe event %s (%s): customer %s matches no organization; stored",
            event.stripe_event_id,
            kind,
            customer_id or "-",
        )
        _finish(
            event,
            WebhookEventStatus.UNMATCHED,
            f"customer {customer_id or '-'} matches no organization",
            needs_attention=True,
        )
        return WebhookEventStatus.UNMATCHED
    if kind in SUBSCRIPTION_EVENTS:
        sub_id = _id(obj.get("id"))
        detail = ""
    else:
        sub_id = _invoice_subscription(obj)
        detail = _invoice_detail(kind, obj)
    fetched = _fetch_subscription(sub_id) if settings.STRIPE_API_KEY and sub_id else None
    if fetched is not None:
        subscription, as_of = fetched
    elif kind in INVOICE_EVENTS:
        subscription, as_of = None, None  # an invoice: no subscription state to apply
    else:
        subscription, as_of = obj, event.stripe_created_at
    if subscription is not None:
        outcome = subscription_apply(
            organization=organization, subscription=subscription, as_of=as_of
        )
        detail = f"{detail}; {outcome.reason}" if detail else outcome.reason
        status = WebhookEventStatus.PROCESSED if outcome.applied else WebhookEventStatus.IGNORED
        if kind in INVOICE_EVENTS:
            status = WebhookEventStatus.PROCESSED
    else:
        status = WebhookEventStatus.PROCESSED
    _finish(event, status, detail, matched_organization=organization)
    return status


def _meter_error_detail(payload: dict) -> str:
    """One line for staff: the meter, Stripe's summary and the error codes with counts."""
    data = payload.get("data") or {}
    data = data.get("object") if isinstance(data.get("object"), dict) else data
    meter = _id(payload.get("related_object")) or _id(data.get("meter")) or "-"
    reason = data.get("reason") if isinstance(data.get("reason"), dict) else {}
    codes = ", ".join(
        f"{t.get('code')} x{t.get('error_count')}"
        for t in reason.get("error_types") or []
        if isinstance(t, dict)
    )
    summary = data.get("developer_message_summary") or data.get("summary") or ""
    return f"meter events rejected (meter {meter}): {summary} [{codes or 'no error types'}]"


def _invoice_detail(kind: str, invoice: dict) -> str:
    if kind == "invoice.paid":
        return f"invoice {invoice.get('id')} paid: {invoice.get('amount_paid')} cents"
    logger.warning(
        "invoice %s payment failed (attempt %s) for customer %s",
        invoice.get("id"),
        invoice.get("attempt_count"),
        _id(invoice.get("customer")),
    )
    return (
        f"invoice {invoice.get('id')} payment failed: {invoice.get('amount_due')} cents due, "
        f"attempt {invoice.get('attempt_count')}"
    )
