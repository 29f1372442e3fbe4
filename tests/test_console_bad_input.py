"""Bad input to the console: the simulator's fetch endpoints and the customer, user and import
forms. Every refusal is a clear 4xx (a JSON problem for what the page scripts fetch, the page
with its error for a form), never a 500, and writes nothing to Redis."""

from __future__ import annotations

import contextlib
import html
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from ivr.app import MAX_REQUEST_BYTES
from ivr.customers import Customer
from ivr.web.console.customers import MAX_IMPORT_BYTES
from tests.conftest import plain_client
from tests.console_helpers import make_user, post, session_csrf, sign_in

CALLER = "+14155550123"
UNKNOWN_SID = "CA" + "0" * 32
MALFORMED_SIDS = ["CA123", "CA" + "g" * 32, "XY" + "0" * 32, "CA" + "0" * 31 + "A", "CA" + "0" * 40]
HUGE = "x" * (MAX_REQUEST_BYTES + 1)
GOOD_CSV = "id,phone,name,sms\n12345678,+14155550161,Ada Lovelace,yes\n"


@pytest.fixture
def console_app(simulated_app):
    for name, role in (("vera", "viewer"), ("eddie", "editor"), ("ada", "admin")):
        make_user(simulated_app, name, role)
    simulated_app.extensions["ivr"].users.delete("admin")  # ada is the only admin
    return simulated_app


def _contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key's value, as data (DUMP's bytes may differ for an unchanged hash), sessions
    aside: their idle expiry may slide on any request."""
    readers = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"set": lambda key: sorted(client.smembers(key)),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"stream": lambda key: client.xrange(key),
    }
    found = {}
    for key in client.scan_iter():
        if b":session:" not in key:
            found[key] = readers[client.type(key)](key)
    return found


@pytest.fixture
def unchanged(redis_url: str):
    """A context manager that fails the test if Redis changed inside it."""
    client = plain_client(redis_url)

    @contextlib.contextmanager
    def watching() -> Iterator[None]:
        before = _contents(client)
        yield
        after = _contents(client)
        added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
        changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
        assert (added, removed, changed) == ([], [], []), "a refused request wrote to Redis"

    yield watching
    client.close()


class Fetch:
    """The simulator page's fetches: the CSRF header, and whatever body the test sends (no
    Accept header: the answer must be JSON even so)."""

    def __init__(self, client: FlaskClient):
        self.client = client
        self.csrf = session_csrf(client)

    def post(self, path: str, body: Any = None, content_type: str | None = None) -> Any:
        if body is not None and not isinstance(body, str | bytes):
            body, content_type = json.dumps(body), content_type or "application/json"
        headers = {"X-CSRF-Token": self.csrf}
        return self.client.post(path, data=body, content_type=content_type, headers=headers)

    def get(self, path: str) -> Any:
        return self.client.get(path)

    def place_call(self, **fields: Any) -> dict[str, Any]:
        response = self.post(
            "/console/simulator/calls", {"flow": "default", "caller": CALLER, **fields}
        )
        assert response.status_code == 201, response.text
        assert response.json["waiting"], "the default flow asks a question first"
        return response.json


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """A JSON problem (RFC 9457) with `status` and words a person can read."""
    assert response.status_code == status, response.text
    assert response.mimetype == "application/problem+json", response.text
    body = response.get_json()
    assert body["status"] == status
    assert body["detail"] and body["error"] == body["detail"], "the page script shows `error`"
    return body


def assert_page(response: Any, status: int, *words: str) -> str:
    """An HTML page with `status` that says `words`."""
    assert response.status_code == status, response.text
    assert response.mimetype == "text/html"
    text = html.unescape(response.text)
    assert "Traceback" not in text
    for word in words:
        assert word in text
    return text


@pytest.fixture
def viewer(console_app) -> Fetch:
    return Fetch(sign_in(console_app, "vera"))


# -- the simulator: placing a call ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        # Sent as JSON, but not a JSON object: 400.
        ("", "application/json", 400, "JSON object"),
        ("not json", "application/json", 400, "JSON object"),
        ('{"flow": "default", "caller": "+14155550123"', "application/json", 400, "JSON object"),
        (b"\xff\xfe{}", "application/json", 400, "JSON object"),
        ("[]", "application/json", 400, "JSON object"),
        ('["default", "+14155550123"]', "application/json", 400, "JSON object"),
        ("null", "application/json", 400, "JSON object"),
        ("5", "application/json", 400, "JSON object"),
        ('"default"', "application/json", 400, "JSON object"),
        # Any other content type, whatever the body: 415.
        ('{"flow": "default", "caller": "+14155550123"}', "text/plain", 415, "application/json"),
        (
            "flow=default&caller=%2B14155550123",
            "application/x-www-form-urlencoded",
            415,
            "application/json",
        ),
        ('{"flow": "default", "caller": "+14155550123"}', None, 415, "application/json"),
    ],
)
def test_placing_a_call_needs_a_json_object_sent_as_json(
    viewer, unchanged, body, content_type, status, says
):
    with unchanged():
        problem = assert_problem(
            viewer.post("/console/simulator/calls", body, content_type=content_type), status
        )
    assert says in problem["detail"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"caller": CALLER}, "flow"),
        ({"flow": 5, "caller": CALLER}, "flow"),
        ({"flow": None, "caller": CALLER}, "flow"),
        ({"flow": ["default"], "caller": CALLER}, "flow"),
        ({"flow": {"name": "default"}, "caller": CALLER}, "flow"),
        ({"flow": "", "caller": CALLER}, "flow"),
        ({"flow": "x" * 5000, "caller": CALLER}, "flow"),
        ({"flow": "default", "version": "beta", "caller": CALLER}, "version"),
        ({"flow": "default", "version": 1, "caller": CALLER}, "version"),
        ({"flow": "default", "version": None, "caller": CALLER}, "version"),
        ({"flow": "default"}, "caller"),
        ({"flow": "default", "caller": None}, "caller"),
        ({"flow": "default", "caller": 14155550123}, "caller"),
        ({"flow": "default", "caller": ["+14155550123"]}, "caller"),
        ({"flow": "default", "caller": ""}, "caller"),
        ({"flow": "default", "caller": "not a number"}, "caller"),
        ({"flow": "default", "caller": "+1"}, "caller"),
        ({"flow": "default", "caller": "(415) 555-0123"}, "caller"),  # national: no country
    ],
)
def test_placing_a_call_names_the_bad_field(viewer, unchanged, fields, named):
    with unchanged():
        problem = assert_problem(viewer.post("/console/simulator/calls", fields), 400)
    assert problem["detail"].startswith(named)


@pytest.mark.parametrize(
    "fields",
    [
        {"flow": "nope"},
        {"flow": "../default"},
        {"flow": "default", "version": "draft"},  # the default flow has no draft
    ],
)
def test_a_flow_or_draft_that_does_not_exist_is_not_found(viewer, unchanged, fields):
    with unchanged():
        assert_problem(viewer.post("/console/simulator/calls", {"caller": CALLER, **fields}), 404)


def test_a_bad_caller_for_a_draft_freezes_no_trial(console_app, viewer, unchanged):
    versions = console_app.extensions["ivr"].flows.library.versions
    live = versions.live("default")
    versions.save_draft("default", live.text, author="eddie", base=live.number, now_ms=0)
    with unchanged():
        problem = assert_problem(
            viewer.post(
                "/console/simulator/calls",
                {"flow": "default", "version": "draft", "caller": "garbage"},
            ),
            400,
        )
    assert problem["detail"].startswith("caller")
    assert viewer.place_call(version="draft")["call_sid"], "a good caller is still put through"


def test_a_body_over_the_apps_limit_is_refused(viewer, unchanged):
    with unchanged():
        response = viewer.post(
            "/console/simulator/calls", {"flow": "default", "caller": CALLER, "pad": HUGE}
        )
        assert_problem(response, 413)


def test_signed_out_fetches_are_told_to_sign_in_as_json(console_app, unchanged):
    client = console_app.test_client()
    with unchanged():
        assert_problem(
            client.post("/console/simulator/calls", json={"flow": "default", "caller": CALLER}),
            401,
        )
        assert_problem(client.get(f"/console/simulator/calls/{UNKNOWN_SID}/phone"), 401)


# -- the simulator: keys, hang-up and the phone of a call ----------------------------------------


@pytest.mark.parametrize("sid", [*MALFORMED_SIDS, UNKNOWN_SID])
def test_an_unknown_or_malformed_call_sid_is_not_found(viewer, unchanged, sid):
    with unchanged():
        assert_problem(viewer.post(f"/console/simulator/calls/{sid}/keys", {"keys": "1"}), 404)
        assert_problem(viewer.post(f"/console/simulator/calls/{sid}/hangup", {}), 404)
        assert_problem(viewer.get(f"/console/simulator/calls/{sid}/phone"), 404)


def test_a_call_is_its_callers_alone(console_app, viewer, unchanged):
    sid = viewer.place_call()["call_sid"]
    other = Fetch(sign_in(console_app, "eddie"))
    with unchanged():
        assert_problem(other.post(f"/console/simulator/calls/{sid}/keys", {"keys": "1"}), 404)
        assert_problem(other.post(f"/console/simulator/calls/{sid}/hangup", {}), 404)
        assert_problem(other.get(f"/console/simulator/calls/{sid}/phone"), 404)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("", "application/json", 400),
        ("garbage", "application/json", 400),
        ("[]", "application/json", 400),
        ('["1"]', "application/json", 400),
        ("null", "application/json", 400),
        ("1", "application/json", 400),
        ('{"keys": "1"}', "text/plain", 415),
        ("keys=1", "application/x-www-form-urlencoded", 415),
        ('{"keys": "1"}', None, 415),
        ({}, None, 400),
        ({"key": "1"}, None, 400),
        ({"keys": 1}, None, 400),
        ({"keys": ["1"]}, None, 400),
        ({"keys": {"digits": "1"}}, None, 400),
        ({"keys": True}, None, 400),
        ({"keys": ""}, None, 400),
        ({"keys": "12a"}, None, 400),
        ({"keys": "1 2"}, None, 400),
        ({"keys": "\u0661"}, None, 400),  # an Arabic-Indic one: a digit, but not a DTMF key
        ({"keys": "1" * 33}, None, 400),
        ({"keys": "1", "pad": HUGE}, None, 413),
    ],
)
def test_keys_must_be_dtmf_digits_in_a_json_object(viewer, unchanged, body, content_type, status):
    sid = viewer.place_call()["call_sid"]
    with unchanged():
        response = viewer.post(f"/console/simulator/calls/{sid}/keys", body, content_type)
        assert_problem(response, status)
    pressed = viewer.post(f"/console/simulator/calls/{sid}/keys", {"keys": "1"})
    assert pressed.status_code == 200, "the call still waits where it was"
    assert any(event["kind"] == "keys" for event in pressed.json["events"])


def test_silence_is_null_keys(viewer):
    sid = viewer.place_call()["call_sid"]
    response = viewer.post(f"/console/simulator/calls/{sid}/keys", {"keys": None})
    assert response.status_code == 200, response.text
    assert any(event["kind"] == "timeout" for event in response.json["events"])


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("garbage", "text/plain", 415),
        ("garbage", "application/json", 400),
        ("[]", "application/json", 400),
        ({"pad": HUGE}, None, 413),
    ],
)
def test_a_hang_up_with_a_bad_body_is_refused(viewer, unchanged, body, content_type, status):
    sid = viewer.place_call()["call_sid"]
    with unchanged():
        assert_problem(
            viewer.post(f"/console/simulator/calls/{sid}/hangup", body, content_type), status
        )


def test_a_hung_up_call_waits_for_no_keys(viewer, unchanged):
    sid = viewer.place_call()["call_sid"]
    assert viewer.post(f"/console/simulator/calls/{sid}/hangup").status_code == 200  # no body
    with unchanged():
        assert_problem(viewer.post(f"/console/simulator/calls/{sid}/keys", {"keys": "1"}), 409)
        again = viewer.post(f"/console/simulator/calls/{sid}/hangup")  # changes nothing
    assert again.status_code == 200 and again.json["ended_by"] == "caller hung up"
    assert viewer.get(f"/console/simulator/calls/{sid}/phone").status_code == 200


# -- forms: customers ----------------------------------------------------------------------------


@pytest.fixture
def editor(console_app) -> FlaskClient:
    return sign_in(console_app, "eddie")


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({}, "a customer id is an account number"),
        ({"id": "abc", "phone": CALLER, "name": "Ada"}, "a customer id is an account number"),
        ({"id": "1" * 17, "phone": CALLER, "name": "Ada"}, "a customer id is an account number"),
        ({"id": "12345678", "name": "Ada"}, "'phone' is required"),
        ({"id": "12345678", "phone": "not a phone", "name": "Ada"}, "not a phone number"),
        ({"id": "12345678", "phone": "+1", "name": "Ada"}, "not a phone number"),
        ({"id": "12345678", "phone": CALLER}, "'name' is required"),
        ({"id": "12345678", "phone": CALLER, "name": "Ada\x07"}, "control characters"),
        ({"id": "12345678", "phone": CALLER, "name": "A" * 500}, "name must be 1 to"),
        (
            {"id": "12345678", "phone": CALLER, "name": "Ada", "locale": "klingon"},
            "locale must look like",
        ),
        ({"id": "12345678", "phone": CALLER, "name": "Ada", "locale": "xx-YY"}, "locale"),
    ],
)
def test_a_bad_customer_form_is_shown_again_with_its_error(editor, unchanged, form, says):
    with unchanged():
        assert_page(post(editor, "/console/customers", form), 422, "was not saved", says)


def test_a_phone_on_file_for_another_customer_is_refused(console_app, editor, unchanged):
    console_app.extensions["ivr"].customers.put(Customer("11112222", CALLER, "Grace"))
    with unchanged():
        response = post(
            editor, "/console/customers", {"id": "12345678", "phone": CALLER, "name": "Ada"}
        )
        assert_page(response, 409, "on file for customer 11112222")


def test_a_customer_sent_as_json_is_a_form_with_nothing_in_it(editor, unchanged):
    with unchanged():
        response = editor.post(
            "/console/customers",
            json={"id": "12345678", "phone": CALLER, "name": "Ada"},
            headers={"X-CSRF-Token": session_csrf(editor)},
        )
        assert_page(response, 422, "was not saved")


def test_forms_over_the_apps_limit_are_refused(console_app, editor, unchanged):
    admin = sign_in(console_app, "ada")
    with unchanged():
        for client, path, form in [
            (editor, "/console/customers", {"id": "12345678", "phone": CALLER, "name": HUGE}),
            (admin, "/console/users", {"name": "newbie", "role": "viewer", "password": HUGE}),
        ]:
            assert_page(post(client, path, form), 413)


@pytest.mark.parametrize("customer_id", ["99999999", "abc", "1" * 40])
def test_deleting_a_customer_who_is_not_there_is_not_found(editor, unchanged, customer_id):
    with unchanged():
        assert_page(post(editor, f"/console/customers/{customer_id}/delete"), 404)


# -- forms: users --------------------------------------------------------------------------------


@pytest.fixture
def admin(console_app) -> FlaskClient:
    return sign_in(console_app, "ada")


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({}, "a user name is 2 to 32"),
        ({"name": "A B!", "role": "viewer"}, "a user name is 2 to 32"),
        ({"name": "x", "role": "viewer"}, "a user name is 2 to 32"),
        ({"name": "newbie"}, "a role is admin, editor or viewer"),
        ({"name": "newbie", "role": "root"}, "a role is admin, editor or viewer"),
        ({"name": "newbie", "role": "viewer", "password": "short"}, "a password has 12 to"),
        ({"name": "newbie", "role": "viewer", "password": "a" * 12}, "one character repeated"),
        ({"name": "vera", "role": "viewer"}, "already exists"),
    ],
)
def test_a_bad_new_user_is_refused_with_its_reason(admin, unchanged, form, says):
    with unchanged():
        assert_page(post(admin, "/console/users", form), 422, "Not done", says)


@pytest.mark.parametrize(
    ("path", "form", "status", "says"),
    [
        ("/console/users/nobody/role", {"role": "viewer"}, 404, "no user nobody"),
        ("/console/users/A!/role", {"role": "viewer"}, 404, "no user"),
        ("/console/users/vera/role", {"role": "root"}, 422, "a role is admin"),
        ("/console/users/vera/role", {}, 422, "a role is admin"),
        ("/console/users/ada/role", {"role": "viewer"}, 422, "the last admin"),
        ("/console/users/nobody/password", {}, 404, "no user nobody"),
        ("/console/users/A!/password", {}, 404, "user name"),
        ("/console/users/nobody/delete", {}, 404, "no user nobody"),
        ("/console/users/A!/delete", {}, 404, "no user"),
        ("/console/users/ada/delete", {}, 422, "the last admin"),
    ],
)
def test_changes_to_users_who_cannot_take_them_are_refused(
    admin, unchanged, path, form, status, says
):
    with unchanged():
        assert_page(post(admin, path, form), status, says)


def test_an_audit_page_far_beyond_the_end_is_empty(admin):
    for page in ("99999999999999999999999", "-5", "many"):
        assert_page(admin.get(f"/console/audit?page={page}"), 200)


# -- forms: the customers CSV import -------------------------------------------------------------


def upload(client: FlaskClient, content: bytes, filename: str = "customers.csv", **form: Any):
    return post(
        client,
        "/console/customers/import",
        {"file": (io.BytesIO(content), filename), **form},
        content_type="multipart/form-data",
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "the header must be"),
        (b"name,phone\nAda,+14155550161\n", "the header must be"),
        (b"id,phone,name,sms\n12345678,+14155550161,Ada,yes\n\xff\xfe\n", "not UTF-8"),
        (b"id,phone,name,sms\n12345678,+14155550161,Ada\x00,yes\n", "line 2"),
        (b'id,phone,name,sms\n12345678,+14155550161,"Ada,yes\n', "not valid CSV"),
        (b"id,phone,name,sms\n12345678,+14155550161,Ada,maybe\n", "line 2: sms"),
        (b"id,phone,name,sms\nabc,+14155550161,Ada,yes\n", "line 2: id"),
        (b"id,phone,name,sms\n12345678,5550161,Ada,yes\n", "line 2: phone"),
        (
            b"id,phone,name,sms\n12345678,+14155550161,Ada,yes\n12345678,+14155550162,Bo,no\n",
            "line 3: id 12345678 is also on line 2",
        ),
    ],
)
def test_a_bad_csv_is_listed_and_nothing_is_imported(editor, unchanged, content, says):
    with unchanged():
        assert_page(upload(editor, content), 422, says)


def test_a_bad_csv_lists_every_kind_of_bad_row_at_once(console_app, editor):
    console_app.extensions["ivr"].customers.put(Customer("99999999", "+14155550199", "Here"))
    content = (
        b"id,phone,name,sms\n"
        b"12345678,+14155550161,Ada,yes\n"
        b"abc,+14155550162,Bad Id,yes\n"  # line 3: the row's format
        b"12345678,+14155550163,Ada again,yes\n"  # line 4: twice in the file
        b"22223333,+14155550199,Taker,yes\n"  # line 5: a phone on file for someone else
    )
    text = assert_page(upload(editor, content), 422, "line 3: id")
    assert "line 4: id 12345678 is also on line 2" in text
    assert "line 5: this phone is already on file for customer 99999999" in text
    assert console_app.extensions["ivr"].customers.get("12345678") is None


def test_an_unknown_country_is_said_once(editor, unchanged):
    national = (
        b"id,phone,name,sms\n12345678,(415) 555-0161,Ada,yes\n87654321,(415) 555-0162,Bo,no\n"
    )
    with unchanged():
        text = assert_page(upload(editor, national, country="ZZ"), 422, "country")
    assert text.count("ISO 3166") == 1, "one message, not one per row"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ({}, "multipart/form-data"),
        ({"file": "12345678,+14155550161,Ada,yes"}, "multipart/form-data"),
        ({"file": GOOD_CSV}, "application/x-www-form-urlencoded"),
    ],
)
def test_an_import_without_a_file_asks_for_one(editor, unchanged, data, content_type):
    with unchanged():
        response = post(editor, "/console/customers/import", data, content_type=content_type)
        assert_page(response, 422, "choose a CSV file")


def test_an_import_with_a_nameless_file_asks_for_one(editor, unchanged):
    with unchanged():
        assert_page(upload(editor, GOOD_CSV.encode(), filename=""), 422, "choose a CSV file")


def test_a_csv_over_2_mb_is_refused(editor, unchanged):
    row = b"12345678,+14155550161,Ada Lovelace,yes\n"
    content = b"id,phone,name,sms\n" + row * (MAX_IMPORT_BYTES // len(row) + 1)
    with unchanged():
        assert_page(upload(editor, content), 413, "over 2 MB")
        assert_page(upload(editor, content + b"x" * (1024 * 1024)), 413)


def test_a_good_import_still_goes_through(console_app, editor):
    assert_page(upload(editor, GOOD_CSV.encode()), 200, "Imported: 1 created")
    assert console_app.extensions["ivr"].customers.get("12345678").name == "Ada Lovelace"
