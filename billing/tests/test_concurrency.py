"""Exactly one event per billable request under concurrency, against a real server, however
many of them share one client X-Request-ID."""

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from billing.models import BillingEvent
from tenancy.context import cross_tenant
from tenancy.models import PlanTier
from tenancy.ratelimit import tier_limit
from tenancy.serializers import OrganizationTokenObtainPairSerializer
from tenancy.tests.factories import OrganizationFactory, member_of

THREADS = 8
REQUESTS_PER_THREAD = 50
REPEAT_EVERY = 5  # every 5th request reuses a shared client id: 20% repeated X-Request-IDs


def _token(user) -> str:
    return str(OrganizationTokenObtainPairSerializer.get_token(user).access_token)


@pytest.mark.live
def test_concurrent_requests_are_each_billed_once_whatever_their_x_request_id(
    live_server, transactional_db, settings
):
    # Rate limits are out of scope here: each organization sends 4 x 50 = 200 requests
    # in a few seconds, which only stayed under the factory's 'pro' tier (300/min) by
    # luck of the numbers. Pin both organizations to 'enterprise' and make sure that
    # tier has no limit (tenancy.ratelimit: no limit configured = unlimited), so a 429
    # can never replace a billable 200 whatever THREADS or the plans' rate limits become.
    settings.BILLING_PLANS = {
        **settings.BILLING_PLANS,
        PlanTier.ENTERPRISE: {**settings.BILLING_PLANS[PlanTier.ENTERPRISE], "rate_limit": {}},
    }
    orgs = [OrganizationFactory(plan_tier=PlanTier.ENTERPRISE) for _ in range(2)]
    assert all(tier_limit(org) is None for org in orgs)
    users = [member_of(org) for org in orgs]
    tokens = [_token(user) for user in users]
    barrier = threading.Barrier(THREADS)
    paths = ["/api/v1/cases/", "/api/v1/clients/"]

    def worker(thread: int) -> list[tuple[int, str, int, str]]:
        side = thread % 2  # threads 0,2,4,6 act for orgs[0]; 1,3,5,7 for orgs[1]
        sent = []
        barrier.wait()
        for j in range(REQUESTS_PER_THREAD):
            if j % REPEAT_EVERY == 0:
                # shared by the 4 threads of this organization, sent at about the same time
                request_id = f"rep-{j // REPEAT_EVERY}"
            else:
                request_id = f"u-{thread}-{j}"
            request = urllib.request.Request(
                live_server.url + paths[j % 2],
                headers={"Authorization": f"Bearer {tokens[side]}", "X-Request-ID": request_id},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                headers = response.headers
                sent.append(
                    (side, request_id, response.status, headers["X-Request-ID"])
                    + (headers["X-Server-Request-ID"],)
                )
        return sent

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = [item for chunk in pool.map(worker, range(THREADS)) for item in chunk]

    assert len(results) == THREADS * REQUESTS_PER_THREAD
    assert all(status == 200 for _, _, status, _, _ in results)
    assert all(sent == echoed for _, sent, _, echoed, _ in results)
    # one event per request served, under the server's id, with the client's id beside it
    expected = {(orgs[side].pk, server_id, sent) for side, sent, _, _, server_id in results}
    assert len(expected) == len(results)
    with cross_tenant(reason="test assertions over both organizations"):
        rows = list(
            BillingEvent.objects.filter(event_name="api.request").values_list(
                "organization_id", "request_id", "dimensions__client_request_id", "user_id"
            )
        )
    actual = [(org_id, request_id, client_id) for org_id, request_id, client_id, _ in rows]
    # rows == billable requests; no duplicates; right organization, user and client id
    assert len(actual) == len(set(actual)) == len(expected)
    assert set(actual) == expected
    user_of = {org.pk: user.pk for org, user in zip(orgs, users, strict=True)}
    assert all(user_id == user_of[org_id] for org_id, _, _, user_id in rows)
    repeated = sum(1 for _, request_id, _, _, _ in results if request_id.startswith("rep-"))
    print(
        f"concurrency: {THREADS} threads x {REQUESTS_PER_THREAD} requests = {len(results)}, "
        f"{repeated} with a repeated X-Request-ID, {len(rows)} rows"
    )
