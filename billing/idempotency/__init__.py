"""Retries through ``Idempotency-Key``: a finished write is answered again from storage,
never run or billed twice (IETF draft-ietf-httpapi-idempotency-key-header-07; Stripe's
idempotent requests, Stripe API reference, "Idempotent requests").

Scope: ``POST``, ``PUT``, ``PATCH`` and ``DELETE`` under ``settings.API_ROUTES`` of a
request with an organization (``TenantMiddleware``); keys are per organization. ``GET``,
``HEAD`` and ``OPTIONS`` ignore the header (they are safe to repeat, and each one served
is billed), and so does a request without organization (anonymous, the token endpoints).

The rules (``IdempotencyMiddleware``):

* The key: 1-255 printable ASCII characters (``0x20``-``0x7E``), sent bare (as Stripe's
  clients do) or as the draft's Structured Field String (``"..."``, RFC 8941 3.3.3,
  which is unquoted first). Anything else: ``400`` ``idempotency_key_invalid``.
* First request with a key: runs normally; if its status is below 500 its response
  (status, body, ``STORED_HEADERS``) is stored with the key and the request's
  ``request_fingerprint``, in the request's own transaction, until
  ``IDEMPOTENCY_KEY_TTL_HOURS`` have passed. A 5xx is not stored (its transaction is
  rolled back anyway): the retry runs again. A 4xx is stored and replayed.
* Same key, same fingerprint, first one finished: the stored response, with
  ``Idempotent-Replayed: true``. The view does not run, nothing is written or billed.
* Same key, other fingerprint: ``422`` ``idempotency_key_reused``; nothing runs.
* Same key while the first request still runs: ``409`` ``idempotency_key_in_progress``
  with ``Retry-After``; never two executions.

How "in progress" is seen by another connection: the request runs in ONE transaction
(opened by ``TenantMiddleware``), and its key row is only written (and visible) when it
commits. A concurrent ``INSERT`` of the same key would wait on the uncommitted index
entry until the first request ends (and a plain lookup would see nothing). So a keyed
request first takes ``pg_try_advisory_xact_lock`` on the key (PostgreSQL manual, 9.27.10
"Advisory Lock Functions"): held until its transaction ends, never waited for; a second
request that does not get it answers 409 at once. Then, in a second statement (so with a
fresh READ COMMITTED snapshot taken after the lock was granted), it reads the key's row:
a request that held the lock before has committed (its row is visible: PostgreSQL makes a
transaction visible before it releases its locks) or rolled back (no row). A stored row
wins over the lock: the holder may be another replay of the same finished key, so
concurrent replays all get the answer; only a key with no row and a held lock is 409. Both
statements go in one message: ONE round trip before the view. After it, the answer is
stored with one ``INSERT ... ON CONFLICT DO UPDATE`` (the update replaces an expired row
not purged yet) sent in the same message as the request's usage event, which the usage
middleware hands over instead of writing it (``event_insert_guarded(event, first=...)``):
so a keyed request costs one round trip more than the same request without a key (a
replay one more and no event write; an unbilled 403 two, having no event to ride on). A
request without the header costs nothing: two dictionary lookups. The isolation level
must be READ COMMITTED (Django's default on PostgreSQL).
"""

# Modules, by concern: ``keys`` (the key, the fingerprint, claim, store and replay),
# ``middleware`` (``IdempotencyMiddleware``, the rules above), ``purge`` (expired keys).
