"""The customer directory: Redis storage with a phone index kept right, the API, and the CRM hook
asked (signed) when the directory has no match."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis.crc import key_slot

from ivr import keys
from ivr.claims import Claim
from ivr.customers import (
    CrmLookup,
    Customer,
    CustomerDirectory,
    CustomerFinder,
    InvalidCustomer,
    PhoneTaken,
    new_customer,
)
from tests.test_api import assert_problem, schema_validator

ADA = Customer(id="12345678", phone="+14155550161", name="Ada Lovelace")
GRACE = Customer(id="87654321", phone="+14155550142", name="Grace Hopper", sms=False)
NEW_PHONE = "+14155550199"
CRM_SECRET = "crm-shared-secret-0123456789"


@pytest.fixture
def directory(redis_client) -> CustomerDirectory:
    return CustomerDirectory(redis_client)


def phone_index(redis_client) -> dict[str, str]:
    """Every shard of the phone index, phone -> the id its claim names."""
    found: dict[str, str] = {}
    for shard in range(keys.CUSTOMER_SHARDS):
        for phone, entry in redis_client.hgetall(keys.customer_phone_index(shard)).items():
            found[phone] = Claim.parse(entry).owner
    return found


# -- validation ----------------------------------------------------------------------------------


def test_a_national_number_with_a_country_hint_is_stored_in_e164():
    customer = new_customer("1234", phone_number="(415) 555-0161", name="Ada", country="us")
    assert customer.phone == "+14155550161"
    assert customer.sms is True
    assert customer.locale is None


def test_a_locale_is_kept_as_asked_in_canonical_shape():
    customer = new_customer("1234", phone_number=ADA.phone, name="Ada", locale="es_mx")
    assert customer.locale == "es-MX"


def test_names_are_trimmed_and_inner_whitespace_collapsed():
    assert new_customer("1234", phone_number=ADA.phone, name="  Ada \t Lovelace ").name == (
        "Ada Lovelace"
    )


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"customer_id": "123"}, "id", "invalid_id"),
        ({"customer_id": "12345678901234567"}, "id", "invalid_id"),
        ({"customer_id": "12a4"}, "id", "invalid_id"),
        ({"customer_id": 1234}, "id", "invalid_id"),
        ({"phone_number": None}, "phone", "missing_field"),
        ({"phone_number": "+1415"}, "phone", "invalid_number"),
        ({"phone_number": "4155550161"}, "phone", "invalid_number"),
        ({"phone_number": 14155550161}, "phone", "invalid_number"),
        ({"country": "XX", "phone_number": "4155550161"}, "country", "invalid_country"),
        ({"name": ""}, "name", "missing_field"),
        ({"name": 7}, "name", "invalid_name"),
        ({"name": "x" * 101}, "name", "invalid_name"),
        ({"name": " Ada " + " " * 100}, "name", "invalid_name"),  # over the schema's maxLength
        ({"name": "Ada\x00"}, "name", "invalid_name"),
        ({"sms": "yes"}, "sms", "invalid_sms"),
        ({"sms": None}, "sms", "invalid_sms"),
        ({"locale": "Spanish"}, "locale", "unknown_locale"),
        ({"locale": 5}, "locale", "unknown_locale"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields, field, reason):
    values: dict[str, Any] = {"customer_id": "1234", "phone_number": ADA.phone, "name": "Ada"}
    values.update(fields)
    customer_id = values.pop("customer_id")
    with pytest.raises(InvalidCustomer) as raised:
        new_customer(customer_id, **values)
    assert (raised.value.field, raised.value.reason) == (field, reason)


# -- the directory ---------------------------------------------------------------------------


def test_put_creates_then_replaces_and_get_reads_it_back(directory):
    assert directory.put(ADA) is True
    assert directory.get(ADA.id) == ADA
    renamed = Customer(ADA.id, ADA.phone, "Ada King", sms=False, locale="es-ES")
    assert directory.put(renamed) is False
    assert directory.get(ADA.id) == renamed


def test_replacing_drops_fields_no_longer_given(directory):
    directory.put(Customer(ADA.id, ADA.phone, ADA.name, locale="es-ES"))
    directory.put(ADA)
    assert directory.get(ADA.id).locale is None


def test_find_by_phone_finds_the_customer_holding_it(directory):
    directory.put(ADA)
    directory.put(GRACE)
    assert directory.find_by_phone(GRACE.phone) == GRACE
    assert directory.find_by_phone(NEW_PHONE) is None


def test_changing_the_phone_removes_the_old_index_entry(directory, redis_client):
    directory.put(ADA)
    moved = Customer(ADA.id, NEW_PHONE, ADA.name)
    directory.put(moved)
    assert directory.find_by_phone(ADA.phone) is None
    assert directory.find_by_phone(NEW_PHONE) == moved
    assert phone_index(redis_client) == {NEW_PHONE: ADA.id}


def test_a_phone_on_file_for_another_customer_is_refused_and_nothing_changes(
    directory, redis_client
):
    directory.put(ADA)
    directory.put(GRACE)
    with pytest.raises(PhoneTaken) as raised:
        directory.put(Customer(GRACE.id, ADA.phone, GRACE.name))
    assert raised.value.holder == ADA.id
    assert directory.get(GRACE.id) == GRACE
    assert phone_index(redis_client) == {ADA.phone: ADA.id, GRACE.phone: GRACE.id}


def test_a_freed_phone_can_be_given_to_another_customer(directory):
    directory.put(ADA)
    directory.put(Customer(ADA.id, NEW_PHONE, ADA.name))
    assert directory.put(Customer(GRACE.id, ADA.phone, GRACE.name)) is True
    assert directory.find_by_phone(ADA.phone).id == GRACE.id


def test_delete_removes_the_customer_and_its_index_entry(directory, redis_client):
    directory.put(ADA)
    directory.put(GRACE)
    assert directory.delete(ADA.id) is True
    assert directory.get(ADA.id) is None
    assert directory.find_by_phone(ADA.phone) is None
    assert phone_index(redis_client) == {GRACE.phone: GRACE.id}
    assert directory.delete(ADA.id) is False
    assert directory.put(Customer("5555", ADA.phone, "Someone Else")) is True


def test_an_index_entry_without_its_customer_does_not_block_the_phone(directory, redis_client):
    redis_client.hset(keys.customer_phones(ADA.phone), ADA.phone, "99999")
    assert directory.put(ADA) is True
    assert directory.find_by_phone(ADA.phone) == ADA


def test_ids_that_are_not_account_numbers_are_never_looked_up(directory, redis_client):
    assert directory.get("../x") is None
    assert directory.delete("*") is False
    assert redis_client.dbsize() == 0


def test_the_directory_is_spread_over_slots_and_each_script_stays_in_one(directory, redis_client):
    for number in range(40):
        directory.put(Customer(f"{1000 + number}", f"+1415555{1000 + number}", "Someone"))
    stored = list(redis_client.scan_iter("ivr:{customer*"))
    assert len({key_slot(key.encode()) for key in stored}) > 8
    assert key_slot(keys.customer("1000").encode()) == key_slot(
        keys.customer_ids(keys.customer_shard("1000")).encode()
    )
    assert len(directory.search(limit=1000)) == 40


# -- the API ---------------------------------------------------------------------------------


def put(api, customer_id: str = ADA.id, **fields: Any):
    return api.put(f"/v1/customers/{customer_id}", {"phone": ADA.phone, "name": ADA.name, **fields})


def test_put_returns_201_then_200_with_the_customer(api):
    created = put(api, sms=False, locale="es-ES")
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.headers["Location"] == f"/v1/customers/{ADA.id}"
    body = created.get_json()
    schema_validator("Customer").validate(body)
    assert body == {
        "id": ADA.id,
        "phone": ADA.phone,
        "name": ADA.name,
        "sms": False,
        "locale": "es-ES",
    }
    replaced = put(api)
    assert replaced.status_code == 200
    assert "Location" not in replaced.headers
    assert replaced.get_json()["sms"] is True
    assert replaced.get_json()["locale"] is None


def test_get_returns_the_customer_or_404(api):
    assert_problem(api.get(f"/v1/customers/{ADA.id}"), 404, "not_found")
    put(api, phone="(415) 555-0161", country="US")
    response = api.get(f"/v1/customers/{ADA.id}")
    assert response.status_code == 200
    schema_validator("Customer").validate(response.get_json())
    assert response.get_json()["phone"] == ADA.phone


def test_delete_returns_204_then_404(api):
    put(api)
    response = api.delete(f"/v1/customers/{ADA.id}")
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_problem(api.delete(f"/v1/customers/{ADA.id}"), 404, "not_found")
    assert_problem(api.get(f"/v1/customers/{ADA.id}"), 404, "not_found")


def test_a_phone_on_file_for_another_customer_is_a_409(api):
    put(api)
    problem = assert_problem(put(api, GRACE.id), 409, "phone_taken", field="phone")
    assert problem["customer_id"] == ADA.id
    assert_problem(api.get(f"/v1/customers/{GRACE.id}"), 404, "not_found")


def test_changing_a_phone_over_the_api_frees_the_old_one(api, app):
    put(api)
    assert put(api, phone=NEW_PHONE).status_code == 200
    assert put(api, GRACE.id).status_code == 201
    customers = app.extensions["ivr"].customers
    assert customers.find_by_phone(ADA.phone).id == GRACE.id
    assert customers.find_by_phone(NEW_PHONE).id == ADA.id


def test_the_body_may_carry_the_same_id_as_the_url(api):
    assert put(api, id=ADA.id).status_code == 201


def test_a_form_encoded_body_may_say_sms_no(api):
    response = api.client.put(
        f"/v1/customers/{ADA.id}",
        data={"phone": ADA.phone, "name": ADA.name, "sms": "no"},
        headers=api.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["sms"] is False


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"phone": "+1415"}, "phone", "invalid_number"),
        ({"phone": "4155550161"}, "phone", "invalid_number"),
        ({"phone": 14155550161}, "phone", "invalid_number"),
        ({"phone": None}, "phone", "missing_field"),
        ({"country": "XX", "phone": "4155550161"}, "country", "invalid_country"),
        ({"name": None}, "name", "missing_field"),
        ({"name": ["Ada"]}, "name", "invalid_name"),
        ({"sms": "yes"}, "sms", "invalid_sms"),
        ({"sms": 1}, "sms", "invalid_sms"),
        ({"locale": "xx-XX"}, "locale", "unknown_locale"),
        ({"locale": 5}, "locale", "unknown_locale"),
        ({"id": "99999"}, "id", "id_mismatch"),
    ],
)
def test_bad_fields_are_a_400_naming_the_field(api, fields, field, reason):
    assert_problem(put(api, **fields), 400, reason, field=field)
    assert_problem(api.get(f"/v1/customers/{ADA.id}"), 404, "not_found")


def test_an_unknown_field_is_a_400(api):
    problem = assert_problem(put(api, email="ada@example.com"), 400, "unknown_field")
    assert "email" in problem["detail"]


@pytest.mark.parametrize("customer_id", ["123", "12345678901234567", "abcd", "12%2034"])
@pytest.mark.parametrize("method", ["put", "get", "delete"])
def test_an_id_that_is_not_an_account_number_is_a_400(api, method, customer_id):
    path = f"/v1/customers/{customer_id}"
    response = put(api, customer_id) if method == "put" else getattr(api, method)(path)
    assert_problem(response, 400, "invalid_id", field="id")


def test_malformed_json_is_a_400(api):
    response = api.client.put(
        f"/v1/customers/{ADA.id}",
        data='{"phone": ',
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "invalid_json")


@pytest.mark.parametrize("document", [[ADA.phone, ADA.name], "Ada", 42, None])
def test_a_body_that_is_not_an_object_is_a_400(api, document):
    response = api.client.put(
        f"/v1/customers/{ADA.id}",
        data=json.dumps(document),
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "invalid_json")


def test_a_body_that_is_neither_json_nor_a_form_is_a_415(api):
    response = api.client.put(
        f"/v1/customers/{ADA.id}",
        data="phone",
        headers={**api.headers, "Content-Type": "text/plain"},
    )
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("method", ["put", "get", "delete"])
def test_every_customer_route_needs_a_token(client, api, method):
    put(api)
    response = getattr(client, method)(f"/v1/customers/{ADA.id}", json={"phone": NEW_PHONE})
    assert_problem(response, 401, "unauthorized")
    assert api.get(f"/v1/customers/{ADA.id}").get_json()["phone"] == ADA.phone


def test_the_app_finds_customers_put_over_the_api(api, app):
    put(api)
    finder = app.extensions["ivr"].customer_finder
    assert finder.crm is None
    assert finder.by_caller_id(ADA.phone).name == ADA.name
    assert finder.by_account(ADA.id).phone == ADA.phone
    assert finder.by_account("1234") is None
    assert finder.by_account("12#") is None


# -- the CRM hook ------------------------------------------------------------------------------


class FakeCrm:
    """A CRM on a local port: records each request, answers as `mode` says."""

    RECORDS = {
        "+14155550177": {"id": "44556677", "phone": "+14155550177", "name": "Alan Turing"},
        "44556677": {"id": 44556677, "phone": "+14155550177", "name": "Alan Turing", "sms": False},
    }

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                crm.requests.append({"headers": dict(self.headers), "body": body})
                crm.answer(self, json.loads(body))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lookup"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        if self.mode == "hang":
            self.release.wait(10)
            return
        if self.mode == "trickle":  # each byte in time for a per-read timeout, never done
            body = json.dumps(self.RECORDS["+14155550177"]).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            for byte in body:
                if self.release.wait(0.2):
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            return
        record = self.RECORDS.get(query.get("phone") or query.get("account") or "")
        status, payload = 200, json.dumps(record).encode()
        if self.mode == "500":
            status, payload = 500, b'{"error": "down"}'
        elif self.mode == "garbage":
            payload = b"<html>not json"
        elif self.mode == "invalid":
            payload = json.dumps({**(record or {}), "phone": "+1415"}).encode()
        elif self.mode == "other_phone":
            payload = json.dumps({**(record or {}), "phone": "+14155550188"}).encode()
        elif self.mode == "huge":
            payload = b'{"name": "' + b"x" * 200_000 + b'"}'
        elif record is None:
            status, payload = 404, b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crm() -> Iterator[FakeCrm]:
    server = FakeCrm()
    yield server
    server.stop()


@pytest.fixture
def lookup(crm) -> CrmLookup:
    return CrmLookup(crm.url, CRM_SECRET, timeout=0.5)


def test_a_lookup_is_signed_so_the_crm_can_verify_it(lookup, crm):
    found = lookup.by_phone("+14155550177")
    assert found == Customer("44556677", "+14155550177", "Alan Turing")
    request = crm.requests[-1]
    headers, body = request["headers"], request["body"]
    assert json.loads(body) == {"phone": "+14155550177"}
    assert headers["Content-Type"] == "application/json"
    timestamp = headers["X-IVR-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 5
    expected = hmac.new(
        CRM_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["X-IVR-Signature"], f"sha256={expected}")


def test_a_lookup_by_account_asks_for_the_account(lookup, crm):
    found = lookup.by_account("44556677")
    assert found is not None and found.id == "44556677" and found.sms is False
    assert json.loads(crm.requests[-1]["body"]) == {"account": "44556677"}


def test_a_404_means_no_match(lookup, crm):
    assert lookup.by_phone("+14155550100") is None
    assert lookup.by_account("11112222") is None
    assert len(crm.requests) == 2


@pytest.mark.parametrize(
    "mode", ["500", "garbage", "invalid", "other_phone", "huge", "hang", "trickle"]
)
def test_a_failing_crm_answers_none_quickly_and_logs_no_number(lookup, crm, caplog, mode):
    crm.mode = mode
    caplog.set_level(logging.WARNING, logger="ivr")
    started = time.monotonic()
    assert lookup.by_phone("+14155550177") is None
    assert time.monotonic() - started < 2
    assert caplog.records, "a failed lookup is logged"
    assert "+14155550177" not in caplog.text
    assert "4155550177" not in caplog.text


def test_an_unreachable_crm_answers_none(crm, caplog):
    crm.stop()
    caplog.set_level(logging.WARNING, logger="ivr")
    lookup = CrmLookup(crm.url, CRM_SECRET, timeout=0.5)
    assert lookup.by_account("44556677") is None
    assert "44556677" not in caplog.text
    assert "ConnectionError" in caplog.text


def test_the_finder_asks_the_crm_only_when_the_directory_has_no_match(directory, lookup, crm):
    directory.put(ADA)
    finder = CustomerFinder(directory, lookup)
    assert finder.by_caller_id(ADA.phone) == ADA
    assert finder.by_account(ADA.id) == ADA
    assert crm.requests == []
    assert finder.by_caller_id("+14155550177").id == "44556677"
    assert finder.by_account("12#") is None
    assert len(crm.requests) == 1


@pytest.mark.parametrize(
    "caller",
    [
        "",
        "anonymous",
        "client:alice",
        "sip:alice@example.com",
        "+266696687",  # what some carriers send for a withheld number: not a valid number
        "+1 415 555 0177",  # not as Twilio sends From
        "+141555501770000000",
    ],
)
def test_a_caller_id_that_is_no_valid_number_is_never_sent_to_the_crm(
    directory, lookup, crm, caller
):
    finder = CustomerFinder(directory, lookup)
    assert finder.by_caller_id(caller) is None
    assert crm.requests == []


def test_the_app_wires_the_crm_hook_from_the_settings(make_app, crm):
    app = make_app(
        customer_lookup_url=crm.url,
        customer_lookup_secret=CRM_SECRET,
        customer_lookup_timeout_seconds=1,
    )
    finder = app.extensions["ivr"].customer_finder
    assert finder.by_account("44556677").name == "Alan Turing"
    assert crm.requests[-1]["headers"]["X-IVR-Signature"].startswith("sha256=")
