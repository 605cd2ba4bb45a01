"""schemathesis over the whole OpenAPI schema, as a tenant (a JWT of a seeded owner):
every operation's generated requests, positive and negative, against the WSGI app, with
all of schemathesis's checks (no server error, only documented statuses, headers and
bodies, schema-valid data accepted, schema-violating data refused, ...)."""

import re
import uuid

import pytest
import schemathesis
from django.core import mail
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from cases.models import Case
from cases.tests.factories import CaseFactory
from tenancy import invitations
from tenancy.testing import access_token

pytestmark = pytest.mark.django_db

#: Examples per operation and phase: enough to find a class of bug, bounded in time.
MAX_EXAMPLES = 6


@pytest.fixture
def _connection_kept():
    """The WSGI app closes the database connection at the end of each request
    (``close_old_connections`` on ``request_finished``), which would end the test's
    transaction; Django's test client disconnects it the same way."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(org, owner, settings, tmp_path, _connection_kept):
    from goldleaves.wsgi import application

    settings.MEDIA_ROOT = str(tmp_path)
    # an unlimited plan: generated requests test the API, not the plan's rate limit
    settings.TIER_RATE_LIMITS = {org.plan_tier: {"api": 1_000_000}}
    settings.STRIPE_WEBHOOK_SECRET = "whsec_schemathesis"
    CaseFactory(organization=org)
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    # NUL cannot be stored in PostgreSQL text; the API refuses it (README, "Limits")
    schema.config.generation.update(allow_x00=False)
    return schema


#: The webhook is authenticated by its ``Stripe-Signature`` (an HMAC of the exact body), which
#: no schema can generate: its generated requests are all refused as unsigned (400), so the
#: check that schema-valid data is accepted does not apply to it. Signed deliveries are
#: tested with Stripe's real scheme in ``billing/tests/stripe_sync/test_webhooks.py``.
SIGNED_ONLY = {"/api/v1/billing/stripe/webhook/"}
ACCEPT_INVITATION = "/api/v1/auth/invitations/accept/"


def _invitation_token(organization) -> str:
    """A fresh, open invitation's token (minted and emailed as the job does)."""
    invitation = invitations.invitation_create(
        organization=organization,
        acting_user=None,
        email=f"st-{uuid.uuid4().hex[:12]}@schemathesis.test",
        role="member",
    )
    invitations.invitation_send(organization=organization, invitation_id=invitation.pk)
    return re.search(r"\?token=(\S+)", mail.outbox[-1].body).group(1)


def _with_state(case, ids: dict) -> None:
    """What a schema cannot say, for positive (schema-valid) requests, from the seeded
    data: a body's ``client`` or ``case`` is an existing one of the organization (another
    id is a 400 "does not exist"), a ``reference_number`` is not yet used (a 400), a
    ``billing_timezone`` is an IANA zone, and an upload's
    bytes are of an accepted type (``DOCUMENT_ALLOWED_TYPES``; detection and its 415s are
    tested in ``cases/tests/test_uploads.py``). Every request has its own
    ``Idempotency-Key`` (reusing one for another request is a 422, tested in
    ``billing/tests/test_idempotency.py``). Everything else stays as generated."""
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if case.operation.path == ACCEPT_INVITATION and isinstance(case.body, dict):
        # a token is only valid if it was minted (and only once): every request gets its own
        if isinstance(case.body.get("token"), str):
            case.body["token"] = _invitation_token(ids["organization"])
        if isinstance(case.body.get("password"), str):
            case.body["password"] = f"Generated-{uuid.uuid4().hex}"
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return
    if not isinstance(case.body, dict):
        return
    for field, value in ids.items():
        if field in ("client", "case") and isinstance(case.body.get(field), str):
            case.body[field] = value
    if isinstance(case.body.get("reference_number"), str):  # unique per organization
        case.body["reference_number"] = uuid.uuid4().hex
    if isinstance(case.body.get("billing_timezone"), str):
        case.body["billing_timezone"] = "Europe/Berlin"
    if "file" in case.body:
        case.body["file"] = b"A generated upload.\n"


def _run(operation, mode, headers, ids) -> str | None:
    """Run ``MAX_EXAMPLES`` generated requests of ``mode`` against ``operation``; the
    failure report (str) of the first that fails a check, or ``None``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case):
        _with_state(case, ids)
        excluded = [positive_data_acceptance] if operation.path in SIGNED_ONLY else []
        if mode.is_positive:
            # ``_with_state`` keeps a positive case valid (an upload's bytes as ``bytes``,
            # which schemathesis's re-validation reads as not a "string"): it is never a
            # schema-violating request
            excluded.append(negative_data_rejection)
        sent = headers
        if (
            case.meta is not None
            and case.meta.is_negative_at(ParameterLocation.HEADER)
            and "Authorization" not in (case.headers or {})
        ):
            sent = {}  # the negative case is the missing token: do not put it back
        case.call_and_validate(headers=sent, excluded_checks=excluded)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported together
        return f"{mode.value} {operation.label}: {exc}"
    return None


def test_every_operation_passes_every_check(api_schema, owner, org):
    """Positive and negative generated requests for every operation of the schema; all
    of schemathesis's checks; failures of all operations reported together."""
    headers = {"Authorization": f"Bearer {access_token(owner, org)}"}
    seeded = Case.objects.get(organization=org)
    ids = {"client": str(seeded.client_id), "case": str(seeded.pk), "organization": org}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 25  # the whole schema, not a part of it
    failures = [
        failure
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if (failure := _run(operation, mode, headers, ids)) is not None
    ]
    assert not failures, "\n\n".join(failures)
