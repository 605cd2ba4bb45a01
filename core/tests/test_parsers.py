"""Bounded, strict JSON bodies (``core.parsers``): each refusal is a JSON error with a
stable code, nothing is written, and the request is still billed exactly once."""

import io
import json

import pytest

from billing.models import BillingEvent
from cases.models import MAX_TEXT_LENGTH, Case, Client
from cases.tests.factories import ClientFactory
from core.parsers import (
    MAX_DEPTH,
    BoundedJSONParser,
    PayloadTooLarge,
    check_json_value,
    parse_json_bytes,
)

pytestmark = pytest.mark.django_db


def _post_raw(api, path, body: bytes, content_type="application/json", **extra):
    return api.generic("POST", path, body, content_type=content_type, **extra)


def _api_events(org):
    return BillingEvent.objects.filter(organization=org, event_name="api.request")


def _refused(response, status, code, org, clients_before):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == code, response.json()
    assert Client.objects.filter(organization=org).count() == clients_before
    event = _api_events(org).get()  # the refused request is billed once, as a 4xx
    assert event.dimensions["status_code"] == status


def test_a_body_over_the_limit_is_a_413_before_parsing(api, org, settings):
    settings.API_MAX_JSON_BYTES = 1000
    body = json.dumps({"name": "x" * 2000}).encode()
    response = _post_raw(api, "/api/v1/clients/", body)
    _refused(response, 413, "body_too_large", org, 0)


def test_a_content_length_over_the_limit_is_refused_before_reading(api, org, settings):
    settings.API_MAX_JSON_BYTES = 1000
    # the body itself is small: only the declared length can have refused it
    response = _post_raw(api, "/api/v1/clients/", b'{"name": "Jane"}', CONTENT_LENGTH="5000")
    _refused(response, 413, "body_too_large", org, 0)


def test_the_parser_reads_at_most_one_byte_past_the_limit(settings):
    settings.API_MAX_JSON_BYTES = 10

    class Stream(io.BytesIO):
        asked: list = []

        def read(self, size=-1):
            self.asked.append(size)
            return super().read(size)

    stream = Stream(b'["' + b"x" * 100 + b'"]')
    with pytest.raises(PayloadTooLarge):
        BoundedJSONParser().parse(stream, parser_context={})
    assert stream.asked == [11]


def test_a_body_at_the_limit_is_accepted(api, org, settings):
    body = json.dumps({"name": "Jane"}).encode()
    settings.API_MAX_JSON_BYTES = len(body)
    response = _post_raw(api, "/api/v1/clients/", body)
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_body_that_is_not_json_is_a_415(api, org, content_type):
    response = _post_raw(api, "/api/v1/clients/", b"name=Jane", content_type=content_type)
    _refused(response, 415, "unsupported_media_type", org, 0)


def test_a_multipart_body_outside_the_upload_is_a_415(api, org):
    response = api.post("/api/v1/clients/", {"name": "Jane"}, format="multipart")
    _refused(response, 415, "unsupported_media_type", org, 0)


@pytest.mark.parametrize(
    "body, code",
    [
        (b"[" * 10_000 + b"]" * 10_000, "json_too_deep"),
        (b'{"name": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "json_too_deep"),
        (b'{"name": "Jane", "phone": NaN}', "json_constant"),
        (b'{"name": "Jane", "phone": Infinity}', "json_constant"),
        (b'{"name": "Jane", "phone": -Infinity}', "json_constant"),
        (b'{"name": "Ja\\u0000ne"}', "json_nul_character"),
        (b'{"na\\u0000me": "Jane"}', "json_nul_character"),
        (b'{"name": "Ja\\ud800ne"}', "json_lone_surrogate"),
        (b'{"name": "Ja\\udfffne"}', "json_lone_surrogate"),
        (b'{"name": "Ja\xffne"}', "parse_error"),
        (b'{"name": ', "parse_error"),
    ],
)
def test_bad_json_is_a_400_with_a_stable_code(api, org, body, code):
    response = _post_raw(api, "/api/v1/clients/", body)
    _refused(response, 400, code, org, 0)


def test_a_valid_surrogate_pair_is_accepted(api, org):
    response = _post_raw(api, "/api/v1/clients/", b'{"name": "Jane \\ud83d\\ude00"}')
    assert response.status_code == 201, response.content
    assert Client.objects.get(organization=org).name == "Jane \U0001f600"


def test_check_json_value_counts_depth_without_recursion():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(Exception) as info:
        check_json_value(deep)
    assert info.value.get_codes() == "json_too_deep"
    check_json_value([[[]]], max_depth=3)
    assert parse_json_bytes(b'{"a": [1, "b", {"c": null}]}') == {"a": [1, "b", {"c": None}]}


@pytest.mark.parametrize(
    "path, field",
    [("/api/v1/clients/", "notes"), ("/api/v1/cases/", "description")],
)
def test_free_text_over_its_max_length_is_a_400(api, org, path, field):
    client = ClientFactory(organization=org)
    body = {"name": "Jane", "client": str(client.pk), "title": "T", "reference_number": "R-1"}
    body[field] = "x" * (MAX_TEXT_LENGTH + 1)
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert Case.objects.filter(organization=org).count() == 0
    assert Client.objects.filter(organization=org).count() == 1
    body[field] = "x" * MAX_TEXT_LENGTH
    assert api.post(path, body, format="json").status_code == 201


def test_the_database_refuses_free_text_over_the_limit_too(org):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Client.objects.create(organization=org, name="Jane", notes="x" * (MAX_TEXT_LENGTH + 1))


def test_outsider_gets_the_same_refusal_and_writes_nothing(outsider_api, org, outsider_org):
    response = _post_raw(outsider_api, "/api/v1/clients/", b'{"name": NaN}')
    assert response.status_code == 400
    assert response.json()["code"] == "json_constant"
    assert not Client.objects.filter(organization=org).exists()
    assert not Client.objects.filter(organization=outsider_org).exists()
