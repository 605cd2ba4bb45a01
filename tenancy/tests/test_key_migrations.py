"""The key migrations (tenancy 0004, cases 0005, billing 0010) forwards, backwards and
forwards again on a database that holds rows in every tenant table.

A scratch database is migrated to the state before them by real ``manage.py migrate``
subprocesses, filled (two organizations, one row per tenant table and more), then taken
through the migrations. Checked each time: the primary keys, that only composite foreign
keys join tenant tables forwards (and Django's single-column ones are back backwards),
every row still there, the membership id sequence going on from where it stood, and a
cross-organization reference still refused.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tenancy.tests.dburl import socket_or_host, subprocess_database_url

ROOT = Path(__file__).resolve().parents[2]
BEFORE = [("tenancy", "0003"), ("cases", "0004"), ("billing", "0009")]
TABLES = [
    "tenancy_membership",
    "cases_client",
    "cases_case",
    "cases_document",
    "billing_meterreport",
    "billing_usageaggregate",
    "billing_events",
]
A, B = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"

SEED = f"""
SET app.cross_tenant = 'on';
INSERT INTO tenancy_organization (id, name, slug, plan_tier, stripe_customer_id,
    billing_timezone, created_at)
VALUES ('{A}', 'A', 'a', 'starter', '', 'UTC', now()),
       ('{B}', 'B', 'b', 'starter', '', 'UTC', now());
INSERT INTO tenancy_user (password, is_superuser, email, full_name, is_active, is_staff,
    date_joined, organization_id)
SELECT '!', false, 'u' || n || '@keys.test', '', true, false, now(), '{A}'
FROM generate_series(1, 3) AS n;
INSERT INTO tenancy_membership (role, created_at, user_id, organization_id)
SELECT 'member', now(), u.id, o.id FROM tenancy_user u CROSS JOIN tenancy_organization o;
INSERT INTO cases_client (id, name, email, phone, notes, created_at, organization_id)
SELECT gen_random_uuid(), 'client ' || n, '', '', '', now(), o.id
FROM tenancy_organization o, generate_series(1, 5) AS n;
INSERT INTO cases_case (id, title, reference_number, status, description, opened_at,
    organization_id, client_id)
SELECT gen_random_uuid(), 'case', 'R-' || c.name, 'open', '', now(), c.organization_id, c.id
FROM cases_client c;
INSERT INTO cases_document (id, file, original_filename, content_type, size_bytes, uploaded_at,
    case_id, organization_id, processing_failure_reason, processing_status)
SELECT gen_random_uuid(), 'f', 'f.pdf', '', 1, now(), c.id, c.organization_id, '', 'pending'
FROM cases_case c;
INSERT INTO billing_meterreport (id, status, dry_run, until, aggregates_created,
    aggregates_sent, aggregates_failed, events_posted, detail, created_at, organization_id)
SELECT gen_random_uuid(), 'succeeded', false, now(), 1, 1, 0, 1, '', now(), id
FROM tenancy_organization;
INSERT INTO billing_usageaggregate (id, event_name, meter_event_name, period_start, sequence,
    value, event_count, identifier, status, attempts, last_error, created_at, organization_id,
    report_id, key_revision)
SELECT gen_random_uuid(), 'api.request', 'api_requests', date_trunc('hour', now()), 1, 1, 1,
    'gl-' || r.organization_id, 'sent', 1, '', now(), r.organization_id, r.id, 0
FROM billing_meterreport r;
INSERT INTO billing_events (id, event_type, event_name, quantity, unit, dimensions, status,
    created_at, organization_id, usage_aggregate_id)
SELECT gen_random_uuid(), 'api', 'api.request', 1, 'call', '{{}}', 1, now(),
    a.organization_id, a.id
FROM billing_usageaggregate a, generate_series(1, 50);
"""


class Scratch:
    def __init__(self):
        self.name = f"gl_keys_{uuid.uuid4().hex[:8]}"
        host, port = socket_or_host()
        self.conninfo = {"host": host, "port": port}

    def connect(self, dbname=None):
        from tenancy.rls.roles import owner_connect_kwargs

        owner = owner_connect_kwargs()  # the owner creates, reads and drops the scratch DB
        return psycopg.connect(
            **self.conninfo,
            dbname=dbname or self.name,
            user=owner["user"],
            password=owner["password"],
            autocommit=True,
        )

    def manage(self, *args):
        env = dict(os.environ, DATABASE_URL=subprocess_database_url(name=self.name))
        env.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")
        result = subprocess.run(
            [sys.executable, "manage.py", *args, "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def query(self, sql, params=()):
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def scratch():
    db = Scratch()
    with db.connect("postgres") as conn:
        conn.execute(f'CREATE DATABASE "{db.name}"')
    try:
        for app, migration in BEFORE:
            db.manage("migrate", app, migration)
        with db.connect() as conn:
            conn.execute(SEED)
        yield db
    finally:
        with db.connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def _state(db) -> dict:
    pks = dict(
        db.query(
            "SELECT conrelid::regclass::text, array_agg(a.attname ORDER BY k.n)::text "
            "FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(att, n) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att "
            "WHERE c.contype = 'p' AND conrelid::regclass::text = ANY(%s) GROUP BY 1",
            [TABLES],
        )
    )
    fks = db.query(
        "SELECT conrelid::regclass::text, conname, array_length(conkey, 1), convalidated "
        "FROM pg_constraint WHERE contype = 'f' AND confrelid::regclass::text = ANY(%s) "
        "AND conrelid::regclass::text = ANY(%s) ORDER BY 1, 2",
        [TABLES, TABLES],
    )
    with db.connect() as conn:
        conn.execute("SET app.cross_tenant = 'on'")
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    identity = db.query(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = 'tenancy_membership'::regclass "
        "AND attname = 'id'"
    )[0][0]
    return {"pks": pks, "fks": fks, "counts": counts, "identity": identity}


def _new_membership_id(db) -> int:
    with db.connect() as conn:
        conn.execute("SET app.cross_tenant = 'on'")
        return conn.execute(
            "WITH u AS (INSERT INTO tenancy_user (password, is_superuser, email, full_name, "
            "is_active, is_staff, date_joined) VALUES ('!', false, %s, '', true, false, now()) "
            "RETURNING id) INSERT INTO tenancy_membership (role, created_at, user_id, "
            f"organization_id) SELECT 'admin', now(), u.id, '{B}' FROM u RETURNING id",
            [f"{uuid.uuid4().hex}@keys.test"],
        ).fetchone()[0]


def _cross_organization_case_is_refused(db) -> None:
    with db.connect() as conn:
        conn.execute("SET app.cross_tenant = 'on'")
        client_of_b = conn.execute(
            f"SELECT id FROM cases_client WHERE organization_id = '{B}' LIMIT 1"
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            with conn.transaction():
                conn.execute(
                    "INSERT INTO cases_case (id, title, reference_number, status, description, "
                    "opened_at, organization_id, client_id) VALUES (gen_random_uuid(), 'x', "
                    f"'X-1', 'open', '', now(), '{A}', %s)",
                    [client_of_b],
                )
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _assert_composite(state):
    assert state["pks"] == {t: "{organization_id,id}" for t in TABLES}
    assert state["fks"] and all(n == 2 and valid for _, _, n, valid in state["fks"]), state["fks"]
    assert state["identity"] == ""  # a sequence default, not an identity column


def test_forwards_backwards_forwards_with_rows(scratch):
    before = _state(scratch)
    assert before["pks"] == {t: "{id}" for t in TABLES}
    assert before["identity"] == "d"
    assert before["counts"] == {
        "tenancy_membership": 6,
        "cases_client": 10,
        "cases_case": 10,
        "cases_document": 10,
        "billing_meterreport": 2,
        "billing_usageaggregate": 2,
        "billing_events": 100,
    }
    single = {(t, name) for t, name, n, _ in before["fks"] if n == 1}
    assert len(single) == 4  # Django's client, case, report, usage_aggregate keys
    first_id = _new_membership_id(scratch)

    out = scratch.manage("migrate")
    assert "Applying tenancy.0004_distributable_keys... OK" in out
    assert "Row-level security: 0 change(s)" in out  # nothing for the backstop to add
    forwards = _state(scratch)
    _assert_composite(forwards)
    assert forwards["counts"]["tenancy_membership"] == before["counts"]["tenancy_membership"] + 1
    assert {k: v for k, v in forwards["counts"].items() if k != "tenancy_membership"} == {
        k: v for k, v in before["counts"].items() if k != "tenancy_membership"
    }
    assert _new_membership_id(scratch) == first_id + 1  # the sequence goes on
    _cross_organization_case_is_refused(scratch)

    for app, migration in reversed(BEFORE):
        scratch.manage("migrate", app, migration)
    backwards = _state(scratch)
    assert backwards["pks"] == before["pks"]
    assert backwards["fks"] == [(*fk[:3], True) for fk in before["fks"]]  # same names, valid
    assert backwards["identity"] == "d"
    assert backwards["counts"]["billing_events"] == 100
    assert _new_membership_id(scratch) == first_id + 2  # the identity goes on too
    _cross_organization_case_is_refused(scratch)

    scratch.manage("migrate")
    again = _state(scratch)
    _assert_composite(again)
    assert again["fks"] == forwards["fks"]
    assert again["counts"]["tenancy_membership"] == before["counts"]["tenancy_membership"] + 3


def test_sqlmigrate_shows_concurrent_index_builds_and_one_short_locked_swap_per_table():
    out = subprocess.run(
        [sys.executable, "manage.py", "sqlmigrate", "billing", "0010"],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=subprocess_database_url()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    sql = out.stdout
    assert sql.count("CREATE UNIQUE INDEX CONCURRENTLY") == 3
    assert 'LOCK TABLE "billing_usageaggregate", "billing_events" IN ACCESS EXCLUSIVE MODE' in sql
    assert "SET LOCAL lock_timeout = '5s'" in sql
    assert sql.count("NOT VALID") == 2 and sql.count("VALIDATE CONSTRAINT") == 2
