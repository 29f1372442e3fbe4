"""Twilio Verify v2 under /v2, driven by the official twilio-python SDK with only its Verify
base URL changed, as an app moving here would. Every answer is checked against the Verify v2
schema kept in the tests (tests/verify_v2_schema.json), errors included."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client
from werkzeug.datastructures import MultiDict
from werkzeug.serving import make_server

from ivr.config import DEFAULT_PROMPTS_DIR
from tests.conftest import ACCOUNT_SID, API_TOKEN, PUBLIC_BASE_URL, twilio_post, twiml
from tests.test_prompts import write_wav
from tests.test_voice_call import code_readings
from tests.twilio_standin import TwilioStandIn
from tests.verify_v2_schema import assert_matches

TO = "+14155550142"


class CheckedHttpClient(TwilioHttpClient):
    """twilio-python's own HTTP client; every answer it gets is checked against the schema
    by the kind of resource its path names, and kept for the test to look at."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, str, int, Any]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        response = super().request(method, url, *args, **kwargs)
        body = json.loads(response.text) if response.text else None
        self.answers.append((method, url, response.status_code, body))
        if body is not None:
            assert_matches(_kind(method, url, response.status_code), body)
        return response


def _kind(method: str, url: str, status: int) -> str:
    if status >= 400:
        return "error"
    path = url.split("?")[0].rstrip("/")
    if path.endswith("/VerificationCheck"):
        return "verification_check"
    if "/Verifications" in path:
        return "verification"
    listing = method == "GET" and path.endswith("/Services")
    return "service_page" if listing else "service"


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    """The app on a real port, as the SDK needs one."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def http_client() -> CheckedHttpClient:
    return CheckedHttpClient()


@pytest.fixture
def sdk(
    server: str, http_client: CheckedHttpClient, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Client]:
    """A twilio-python Client whose Verify domain is this server: the one line an app
    changes. The region and edge settings would rewrite the loopback host: never set here."""
    for name in ("TWILIO_REGION", "TWILIO_EDGE"):
        monkeypatch.delenv(name, raising=False)

    def make(username: str = ACCOUNT_SID, password: str = API_TOKEN) -> Client:
        client = Client(username, password, http_client=http_client)
        client.verify.base_url = server
        return client

    return make


def code_in(sms_body: str) -> str:
    """The code an SMS carries (the one word of digits in it)."""
    return next(word.strip(".") for word in sms_body.split() if word.strip(".").isdigit())


def _code_from_call(client: FlaskClient, twilio_api: TwilioStandIn, verification: Any) -> str:
    """Answer the code call through the Twilio stand-in: the Calls request's URL is fetched
    (signed), a key pressed, and the code read twice."""
    call = twilio_api.calls()[-1]
    params = {
        "CallSid": twilio_api.last_sid,
        "AccountSid": ACCOUNT_SID,
        "To": verification.to,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
    }
    greeting = twiml(twilio_post(client, call.value("Url"), params))
    gather = greeting.find("Gather")
    assert gather is not None
    root = twiml(
        twilio_post(client, call.value("Url") + gather.get("action"), {**params, "Digits": "5"})
    )
    readings = code_readings(root)
    assert len(readings) == 2 and readings[0] == readings[1]
    return readings[0]


def test_a_call_verification_from_create_to_approved(sdk, client, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme Bank", code_length=8)
    assert service.sid.startswith("VA") and service.code_length == 8
    assert service.dtmf_input_required is True
    verification = twilio.verify.v2.services(service.sid).verifications.create(
        to=TO, channel="call"
    )
    assert verification.status == "pending" and verification.channel == "call"
    assert verification.service_sid == service.sid
    call = twilio_api.calls()[-1]
    assert service.sid in call.value("Url"), "the call's URL names its Service"
    greeting = twiml(
        twilio_post(
            client,
            call.value("Url"),
            {
                "CallSid": twilio_api.last_sid,
                "AccountSid": ACCOUNT_SID,
                "To": TO,
                "CallStatus": "in-progress",
            },
        )
    )
    assert "Acme Bank" in " ".join(greeting.itertext()), "the Service's name is said"
    code = _code_from_call(client, twilio_api, verification)
    assert len(code) == 8

    checks = twilio.verify.v2.services(service.sid).verification_checks
    wrong = checks.create(to=TO, code="0" * 8 if code != "0" * 8 else "1" * 8)
    assert (wrong.status, wrong.valid) == ("pending", False)
    right = checks.create(to=TO, code=code)
    assert (right.status, right.valid) == ("approved", True)
    assert right.sid == verification.sid

    # As on Twilio, an approved verification is gone: checked again or fetched, a 404.
    with pytest.raises(TwilioRestException) as again:
        checks.create(to=TO, code=code)
    assert (again.value.status, again.value.code) == (404, 20404)
    with pytest.raises(TwilioRestException) as fetched:
        twilio.verify.v2.services(service.sid).verifications(verification.sid).fetch()
    assert (fetched.value.status, fetched.value.code) == (404, 20404)


def test_fetch_and_cancel_through_update(sdk, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme")
    verifications = twilio.verify.v2.services(service.sid).verifications
    started = verifications.create(to=TO, channel="sms")
    fetched = verifications(started.sid).fetch()
    assert (fetched.sid, fetched.status, fetched.to) == (started.sid, "pending", TO)
    assert [attempt["channel"] for attempt in fetched.send_code_attempts] == ["sms"]
    canceled = verifications(started.sid).update(status="canceled")
    assert canceled.status == "canceled"
    with pytest.raises(TwilioRestException) as checked:
        twilio.verify.v2.services(service.sid).verification_checks.create(
            verification_sid=started.sid, code="123456"
        )
    assert checked.value.code == 20404


def test_the_sms_says_the_service_name_and_has_its_code_length(sdk, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme Bank", code_length=4)
    twilio.verify.v2.services(service.sid).verifications.create(
        to=TO, channel="sms", custom_friendly_name="Acme Card"
    )
    body = twilio_api.messages()[-1].value("Body")
    assert "Acme Card" in body
    code = code_in(body)
    assert len(code) == 4
    check = twilio.verify.v2.services(service.sid).verification_checks.create(to=TO, code=code)
    assert check.status == "approved"


def test_max_check_attempts_is_60202(sdk, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme")
    twilio.verify.v2.services(service.sid).verifications.create(to=TO, channel="sms")
    body = twilio_api.messages()[-1].value("Body")
    code = code_in(body)
    wrong = "1" * 6 if code != "1" * 6 else "2" * 6
    checks = twilio.verify.v2.services(service.sid).verification_checks
    answers = [checks.create(to=TO, code=wrong).status for _ in range(4)]
    assert answers == ["pending"] * 4
    checks.create(to=TO, code=wrong)  # the fifth wrong code ends it
    with pytest.raises(TwilioRestException) as refused:
        checks.create(to=TO, code=wrong)
    assert (refused.value.status, refused.value.code) == (429, 60202)


def test_max_send_attempts_is_60203_and_counts_per_service(sdk, twilio_api):
    twilio = sdk()
    first = twilio.verify.v2.services.create(friendly_name="Acme")
    second = twilio.verify.v2.services.create(friendly_name="Other")
    sends = twilio.verify.v2.services(first.sid).verifications
    for _ in range(5):
        sends.create(to=TO, channel="sms")
    with pytest.raises(TwilioRestException) as refused:
        sends.create(to=TO, channel="sms")
    assert (refused.value.status, refused.value.code) == (429, 60203)
    assert len(twilio_api.messages()) == 5, "five sends per number per 10 minutes"
    # The per-number limit is the Service's own, as on Twilio.
    other = twilio.verify.v2.services(second.sid).verifications.create(to=TO, channel="sms")
    assert other.status == "pending"


def test_another_service_cannot_fetch_check_or_cancel(sdk, twilio_api):
    twilio = sdk()
    mine = twilio.verify.v2.services.create(friendly_name="Acme")
    theirs = twilio.verify.v2.services.create(friendly_name="Other")
    started = twilio.verify.v2.services(mine.sid).verifications.create(to=TO, channel="sms")
    body = twilio_api.messages()[-1].value("Body")
    code = code_in(body)
    other = twilio.verify.v2.services(theirs.sid)
    attempts = [
        lambda: other.verifications(started.sid).fetch(),
        lambda: other.verifications(started.sid).update(status="canceled"),
        lambda: other.verifications(started.sid).update(status="approved"),
        lambda: other.verification_checks.create(verification_sid=started.sid, code=code),
        lambda: other.verification_checks.create(to=TO, code=code),
    ]
    for attempt in attempts:
        with pytest.raises(TwilioRestException) as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (404, 20404)
    # Untouched: the right Service still approves it with the code.
    check = twilio.verify.v2.services(mine.sid).verification_checks.create(to=TO, code=code)
    assert check.status == "approved"


def test_unknown_resources_are_20404(sdk):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme")
    for attempt in (
        lambda: twilio.verify.v2.services("VA" + "0" * 32).fetch(),
        lambda: twilio.verify.v2.services(service.sid).verifications("VE" + "0" * 32).fetch(),
        lambda: twilio.verify.v2.services(service.sid).verification_checks.create(
            to=TO, code="123456"
        ),
        lambda: twilio.verify.v2.services("VA" + "0" * 32).verifications.create(
            to=TO, channel="sms"
        ),
    ):
        with pytest.raises(TwilioRestException) as missing:
            attempt()
        assert (missing.value.status, missing.value.code) == (404, 20404)


def test_services_page_as_the_sdk_pages_them(sdk, http_client):
    twilio = sdk()
    created = [twilio.verify.v2.services.create(friendly_name=f"Team {n}").sid for n in "ABCD"]
    listed = [service.sid for service in twilio.verify.v2.services.stream(page_size=2)]
    default = listed[0]
    assert listed[1:] == created, "the default Service first, then oldest first"
    pages = [url for method, url, _, _ in http_client.answers if method == "GET"]
    assert len(pages) == 3, "five Services, two a page"
    assert twilio.verify.v2.services(default).fetch().friendly_name == "Acme"
    assert [s.sid for s in twilio.verify.v2.services.list(limit=3)] == listed[:3]


def test_update_and_delete_a_service(sdk):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme")
    updated = twilio.verify.v2.services(service.sid).update(
        friendly_name="Acme Bank", dtmf_input_required=False, totp_issuer="Acme"
    )
    assert (updated.friendly_name, updated.dtmf_input_required) == ("Acme Bank", False)
    assert updated.totp["issuer"] == "Acme"
    assert updated.code_length == 6, "an update is partial"
    assert twilio.verify.v2.services(service.sid).delete() is True
    with pytest.raises(TwilioRestException) as gone:
        twilio.verify.v2.services(service.sid).fetch()
    assert gone.value.code == 20404


def test_bad_settings_are_60200(sdk):
    twilio = sdk()
    for settings in ({"friendly_name": "x" * 31}, {"friendly_name": "A", "code_length": 11}):
        with pytest.raises(TwilioRestException) as refused:
            twilio.verify.v2.services.create(**settings)
        assert (refused.value.status, refused.value.code) == (400, 60200)


def test_a_code_call_without_a_key_press_reads_the_code_at_once(sdk, client, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme", dtmf_input_required=False)
    verification = twilio.verify.v2.services(service.sid).verifications.create(
        to=TO, channel="call"
    )
    call = twilio_api.calls()[-1]
    params = {
        "CallSid": twilio_api.last_sid,
        "AccountSid": ACCOUNT_SID,
        "To": TO,
        "CallStatus": "in-progress",
    }
    answer = twiml(twilio_post(client, call.value("Url"), params))
    redirect = answer.find("Redirect")
    assert redirect is not None and answer.find("Gather") is None
    root = twiml(twilio_post(client, call.value("Url") + redirect.text, params))
    (code, _again) = code_readings(root)
    check = twilio.verify.v2.services(service.sid).verification_checks.create(
        verification_sid=verification.sid, code=code
    )
    assert check.status == "approved"


def test_approve_through_update(sdk):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme")
    started = twilio.verify.v2.services(service.sid).verifications.create(to=TO, channel="sms")
    approved = (
        twilio.verify.v2.services(service.sid).verifications(started.sid).update(status="approved")
    )
    assert (approved.status, approved.valid) == ("approved", True)


# -- credentials -------------------------------------------------------------------------------


def test_a_wrong_token_is_20003(sdk):
    with pytest.raises(TwilioRestException) as refused:
        sdk(password="not-a-token").verify.v2.services.create(friendly_name="Acme")
    assert (refused.value.status, refused.value.code) == (401, 20003)


def test_a_key_sid_may_stand_as_the_user_name(app, sdk):
    tokens = app.extensions["ivr"].api_tokens
    token = tokens.issue("billing")
    key_sid = tokens.key_sid(token)
    assert key_sid.startswith("SK") and len(key_sid) == 34
    service = sdk(username=key_sid, password=token).verify.v2.services.create(friendly_name="A")
    assert service.sid.startswith("VA")
    other = "SK" + "0" * 32
    with pytest.raises(TwilioRestException) as refused:
        sdk(username=other, password=token).verify.v2.services.create(friendly_name="A")
    assert refused.value.code == 20003


# -- what an SDK never sends, but the wire gets ---------------------------------------------------


def _basic(token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"AC1:{token}".encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer " + API_TOKEN},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
)
def test_garbage_credentials_are_20003(client, headers):
    response = client.get("/v2/Services", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == 20003
    assert_matches("error", response.get_json())


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/v2/Services", {}),  # no FriendlyName
        ("/v2/Services", {"FriendlyName": "A", "CodeLength": "six"}),
        ("/v2/Services", {"FriendlyName": "A", "DtmfInputRequired": "maybe"}),
        ("/v2/Services", {"FriendlyName": "A\x00"}),
        ("/v2/Services", {"FriendlyName": "x" * 5000}),
    ],
)
def test_garbage_service_settings_are_60200(client, path, data):
    response = client.post(path, data=data, headers=_basic())
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["code"] == 60200
    assert_matches("error", response.get_json())


def test_garbage_verification_requests(client, app):
    service = client.post("/v2/Services", data={"FriendlyName": "A"}, headers=_basic()).get_json()
    base = f"/v2/Services/{service['sid']}"
    cases = [
        (f"{base}/Verifications", {"Channel": "sms"}, 400, 60200),
        (f"{base}/Verifications", {"To": "not a number", "Channel": "sms"}, 400, 60200),
        (f"{base}/Verifications", {"To": TO, "Channel": "pigeon"}, 400, 60200),
        (f"{base}/Verifications", {"To": TO, "Channel": "sms", "CustomCode": "1234"}, 400, 60200),
        (f"{base}/Verifications", {"To": "+19005550100", "Channel": "call"}, 403, 60410),
        (f"{base}/Verifications", {"To": "+819012345678", "Channel": "sms"}, 403, 60605),
        (f"{base}/VerificationCheck", {"Code": "123456"}, 400, 60221),
        (f"{base}/VerificationCheck", {"To": TO}, 400, 60200),
        (f"{base}/VerificationCheck", {"To": TO, "Code": "12ab"}, 400, 60200),
        (f"{base}/Verifications/VE{'0' * 32}", {"Status": "done"}, 400, 60200),
        (f"{base}/Verifications/not-a-sid", {"Status": "canceled"}, 404, 20404),
        ("/v2/Services/not-a-sid/Verifications", {"To": TO, "Channel": "sms"}, 404, 20404),
        ("/v2/Nothing", {}, 404, 20404),
    ]
    for path, data, status, code in cases:
        response = client.post(path, data=data, headers=_basic())
        body = response.get_json()
        assert (response.status_code, body["code"]) == (status, code), (path, data, body)
        assert_matches("error", body)
    twice = client.post(
        f"{base}/Verifications",
        data=MultiDict([("To", TO), ("To", "+14155550143"), ("Channel", "sms")]),
        headers=_basic(),
    )
    assert (twice.status_code, twice.get_json()["code"]) == (400, 60200)
    as_json = client.post(
        f"{base}/Verifications", json={"To": TO, "Channel": "sms"}, headers=_basic()
    )
    assert as_json.status_code == 415 and as_json.get_json()["code"] == 20415
    huge = client.post(
        f"{base}/Verifications",
        data={"To": TO, "Channel": "sms", "X": "y" * 2_000_000},
        headers=_basic(),
    )
    assert huge.status_code == 413 and huge.get_json()["code"] == 20413
    wrong_method = client.put("/v2/Services", headers=_basic())
    assert wrong_method.status_code == 405 and wrong_method.get_json()["code"] == 20004


def test_the_default_service_is_read_only(client, app):
    default = app.extensions["ivr"].verify_services.default_sid
    fetched = client.get(f"/v2/Services/{default}", headers=_basic())
    assert fetched.status_code == 200 and fetched.get_json()["friendly_name"] == "Acme"
    assert_matches("service", fetched.get_json())
    for response in (
        client.post(f"/v2/Services/{default}", data={"FriendlyName": "B"}, headers=_basic()),
        client.delete(f"/v2/Services/{default}", headers=_basic()),
    ):
        assert response.status_code == 403
        assert_matches("error", response.get_json())


def test_v1_verifications_belong_to_the_default_service(client, api, app, twilio_api):
    """/v1 keeps working, on the default Service: /v2 sees its verifications there, and no
    other Service does."""
    started = api.start(to=TO, channel="sms").get_json()
    default = app.extensions["ivr"].verify_services.default_sid
    fetched = client.get(f"/v2/Services/{default}/Verifications/{started['sid']}", headers=_basic())
    assert fetched.status_code == 200
    assert_matches("verification", fetched.get_json())
    other = client.post("/v2/Services", data={"FriendlyName": "B"}, headers=_basic()).get_json()
    elsewhere = client.get(
        f"/v2/Services/{other['sid']}/Verifications/{started['sid']}", headers=_basic()
    )
    assert elsewhere.status_code == 404
    # And a /v2 Service's verification is not /v1's.
    theirs = client.post(
        f"/v2/Services/{other['sid']}/Verifications",
        data={"To": "+14155550143", "Channel": "sms"},
        headers=_basic(),
    ).get_json()
    assert api.get(f"/v1/verifications/{theirs['sid']}").status_code == 404
    assert api.post(f"/v1/verifications/{theirs['sid']}/cancel").status_code == 404


# -- tokens scoped to one Service ------------------------------------------------------------------


def test_a_token_scoped_to_a_service_sees_that_service_alone(app, sdk, client):
    admin = sdk()
    mine = admin.verify.v2.services.create(friendly_name="Acme")
    theirs = admin.verify.v2.services.create(friendly_name="Other")
    tokens = app.extensions["ivr"].api_tokens
    token = tokens.issue("acme", service=mine.sid)
    scoped = sdk(password=token)
    assert [service.sid for service in scoped.verify.v2.services.list()] == [mine.sid]
    for attempt in (
        lambda: scoped.verify.v2.services(theirs.sid).fetch(),
        lambda: scoped.verify.v2.services(theirs.sid).verifications.create(to=TO, channel="sms"),
        lambda: scoped.verify.v2.services(theirs.sid).update(friendly_name="Mine now"),
    ):
        with pytest.raises(TwilioRestException) as hidden:
            attempt()
        assert hidden.value.code == 20404
    for attempt in (
        lambda: scoped.verify.v2.services.create(friendly_name="More"),
        lambda: scoped.verify.v2.services(mine.sid).delete(),
    ):
        with pytest.raises(TwilioRestException) as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (403, 20403)
    started = scoped.verify.v2.services(mine.sid).verifications.create(to=TO, channel="sms")
    assert started.service_sid == mine.sid


def test_a_v1_token_scoped_to_a_service_works_in_it_alone(app, sdk, client):
    """/v1 with a scoped token starts, reads and cancels its Service's verifications, and no
    one else's; the unscoped token (the default Service) does not see them."""
    mine = sdk().verify.v2.services.create(friendly_name="Acme")
    token = app.extensions["ivr"].api_tokens.issue("acme", service=mine.sid)
    scoped = {"Authorization": f"Bearer {token}"}
    started = client.post(
        "/v1/verifications", json={"to": TO, "channel": "sms"}, headers=scoped
    ).get_json()
    fetched = sdk().verify.v2.services(mine.sid).verifications(started["sid"]).fetch()
    assert fetched.sid == started["sid"], "started in the token's Service"
    unscoped = {"Authorization": f"Bearer {API_TOKEN}"}
    assert client.get(f"/v1/verifications/{started['sid']}", headers=unscoped).status_code == 404
    default_one = client.post(
        "/v1/verifications", json={"to": "+14155550143", "channel": "sms"}, headers=unscoped
    ).get_json()
    for path in (
        f"/v1/verifications/{default_one['sid']}",
        f"/v1/verifications/{default_one['sid']}/cancel",
    ):
        method = client.post if path.endswith("cancel") else client.get
        assert method(path, headers=scoped).status_code == 404
    canceled = client.post(f"/v1/verifications/{started['sid']}/cancel", headers=scoped)
    assert canceled.get_json()["status"] == "canceled"
    # Nothing but its Service's verifications: not the directory, not the calls.
    assert client.get("/v1/customers/12345678", headers=scoped).status_code == 403


def test_the_code_call_speaks_in_the_services_tts_voice(sdk, client, twilio_api):
    twilio = sdk()
    service = twilio.verify.v2.services.create(friendly_name="Acme", tts_name="Polly.Matthew")
    assert service.tts_name == "Polly.Matthew"
    verification = twilio.verify.v2.services(service.sid).verifications.create(
        to=TO, channel="call"
    )
    call = twilio_api.calls()[-1]
    params = {"CallSid": twilio_api.last_sid, "AccountSid": ACCOUNT_SID, "To": TO}
    greeting = twiml(twilio_post(client, call.value("Url"), params))
    assert {say.get("voice") for say in greeting.iter("Say")} == {"Polly.Matthew"}
    action = call.value("Url") + greeting.find("Gather").get("action")
    reading = twiml(twilio_post(client, action, {**params, "Digits": "1"}))
    assert {say.get("voice") for say in reading.iter("Say")} == {"Polly.Matthew"}
    assert code_readings(reading), verification.sid
    with pytest.raises(TwilioRestException) as refused:
        twilio.verify.v2.services(service.sid).update(tts_name="<Say>")
    assert refused.value.code == 60200


# -- our own channels through /v2 ------------------------------------------------------------------

MISSED_CALL_NUMBER = "+14155550111"
FLASH_POOL = ("+14155550121", "+14155550132")


@pytest.fixture
def call_channels_app(make_app):
    return make_app(
        missed_call_number=MISSED_CALL_NUMBER,
        flash_call_accept_weak_odds=True,  # a test pool: a few numbers
        flash_call_numbers=",".join(FLASH_POOL),
    )


def test_a_missed_call_verification_through_v2(call_channels_app):
    client = call_channels_app.test_client()
    service = client.post("/v2/Services", data={"FriendlyName": "A"}, headers=_basic()).get_json()
    base = f"/v2/Services/{service['sid']}"
    started = client.post(
        f"{base}/Verifications", data={"To": TO, "Channel": "missed_call"}, headers=_basic()
    )
    assert started.status_code == 201
    verification = started.get_json()
    assert_matches("verification", verification)
    assert verification["call_to"] == MISSED_CALL_NUMBER
    by_code = client.post(
        f"{base}/VerificationCheck",
        data={"VerificationSid": verification["sid"], "Code": "123456"},
        headers=_basic(),
    )
    assert (by_code.status_code, by_code.get_json()["code"]) == (400, 69003)
    assert_matches("error", by_code.get_json())
    assert by_code.get_json()["more_info"] == f"{PUBLIC_BASE_URL}/verify-errors/69003"
    page = client.get("/verify-errors/69003")
    assert page.status_code == 200 and "missed-call" in page.get_data(as_text=True)
    call = {"CallSid": "CA" + "3" * 32, "From": TO, "To": MISSED_CALL_NUMBER}
    twiml(
        twilio_post(client, "/voice/missed-call", call | {"StirVerstat": "TN-Validation-Passed-A"})
    )
    fetched = client.get(f"{base}/Verifications/{verification['sid']}", headers=_basic())
    assert fetched.status_code == 404, "approved by the call: gone from /v2, as on Twilio"


def test_a_flash_call_verification_through_v2(call_channels_app, twilio_api):
    client = call_channels_app.test_client()
    service = client.post("/v2/Services", data={"FriendlyName": "A"}, headers=_basic()).get_json()
    base = f"/v2/Services/{service['sid']}"
    started = client.post(
        f"{base}/Verifications", data={"To": TO, "Channel": "flash_call"}, headers=_basic()
    ).get_json()
    assert_matches("verification", started)
    code = twilio_api.calls()[-1].value("From")[-4:]
    check = client.post(
        f"{base}/VerificationCheck", data={"To": TO, "Code": code}, headers=_basic()
    )
    assert check.status_code == 200 and check.get_json()["status"] == "approved"
    assert_matches("verification_check", check.get_json())


def test_a_service_code_as_short_as_a_flash_code_is_checked_by_number(
    call_channels_app, twilio_api
):
    """A Service's 4-digit code has the flash calls' length: with no flash call pending, a
    check by To finds the Service's SMS verification."""
    client = call_channels_app.test_client()
    service = client.post(
        "/v2/Services", data={"FriendlyName": "A", "CodeLength": "4"}, headers=_basic()
    ).get_json()
    base = f"/v2/Services/{service['sid']}"
    client.post(f"{base}/Verifications", data={"To": TO, "Channel": "sms"}, headers=_basic())
    body = twilio_api.messages()[-1].value("Body")
    code = code_in(body)
    check = client.post(
        f"{base}/VerificationCheck", data={"To": TO, "Code": code}, headers=_basic()
    )
    assert check.status_code == 200 and check.get_json()["status"] == "approved"


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v2/Services", {"Authorization": "Basic éé"}),
        ("GET", "/v2/Services", "sk-non-ascii"),
        ("DELETE", "/v2/Services/%C3%A9", None),
        ("GET", "/v2/Services?PageSize=%C2%B2", None),
        ("GET", "/v2/Services?Page=" + "9" * 5000, None),
        ("POST", "/v2/Services?x=1", None),  # with CodeLength=² below
    ],
)
def test_what_once_was_a_500_is_a_twilio_error(client, method, path, headers):
    if headers == "sk-non-ascii":
        user = "SK" + "é" * 32
        headers = {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{API_TOKEN}".encode()).decode()
        }
    data = {"FriendlyName": "A", "CodeLength": "²"} if method == "POST" else None
    response = client.open(path, method=method, headers=headers or _basic(), data=data)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert_matches("error", response.get_json())
    # (A user name that is no key sid is free, as an Account SID is: it is not compared.)


def test_a_service_stored_before_a_nested_setting_existed_still_reads(app, client):
    ivr = app.extensions["ivr"]
    service = ivr.verify_services.create({"FriendlyName": "Old"})
    key = f"ivr:{{services}}:service:{service.sid}"
    record = json.loads(ivr.redis.get(key))
    del record["nested"]["passkeys"]
    ivr.redis.set(key, json.dumps(record))
    ivr.verify_services._forget(service.sid)
    fetched = client.get(f"/v2/Services/{service.sid}", headers=_basic())
    assert fetched.status_code == 200
    assert_matches("service", fetched.get_json())
    assert fetched.get_json()["passkeys"]["relying_party"]["origins"] == []


def test_the_default_services_code_call_says_a_custom_friendly_name(app, client, twilio_api):
    default = app.extensions["ivr"].verify_services.default_sid
    client.post(
        f"/v2/Services/{default}/Verifications",
        data={"To": TO, "Channel": "call", "CustomFriendlyName": "Zebra Corp"},
        headers=_basic(),
    )
    call = twilio_api.calls()[-1]
    params = {"CallSid": twilio_api.last_sid, "AccountSid": ACCOUNT_SID, "To": TO}
    greeting = twiml(twilio_post(client, call.value("Url"), params))
    assert "Zebra Corp" in " ".join(greeting.itertext())


def test_urls_are_public_base_urls_when_the_client_came_by_its_host(client):
    public = client.get("/v2/Services", headers=_basic(), base_url=PUBLIC_BASE_URL)
    assert public.get_json()["meta"]["url"].startswith(PUBLIC_BASE_URL + "/v2/Services")
    internal = client.get("/v2/Services", headers=_basic(), base_url="http://10.0.0.5:8000")
    assert internal.get_json()["meta"]["url"].startswith("http://10.0.0.5:8000/v2/")


def test_an_ivr_calls_own_code_cannot_be_approved_through_v2(app, client):
    """The keypad authentication's code (its scope: the CallSid) belongs to the default
    Service, but only the caller's keys approve it: an update to approved is a 404."""
    ivr = app.extensions["ivr"]
    started = ivr.verifications.start(to=TO, channel="sms", scope="CA" + "1" * 32)
    default = ivr.verify_services.default_sid
    approved = client.post(
        f"/v2/Services/{default}/Verifications/{started.sid}",
        data={"Status": "approved"},
        headers=_basic(),
    )
    assert approved.status_code == 404
    assert ivr.verifications.store.get(started.sid).status == "pending"


def test_updates_at_once_lose_nothing(app, sdk):
    """Partial updates of one Service from many clients at once: each setting one of them
    changed is there at the end, and every update counted (the record's revision)."""
    service = sdk().verify.v2.services.create(friendly_name="Acme")
    settings = [
        {"tts_name": "Polly.Matthew"},
        {"code_length": 7},
        {"totp_issuer": "Acme"},
        {"custom_code_enabled": True},
        {"do_not_share_warning_enabled": True},
        {"dtmf_input_required": False},
    ]
    rounds = 5
    errors: list[BaseException] = []

    def update(changes: dict[str, Any]) -> None:
        client = sdk()
        try:
            for _ in range(rounds):
                client.verify.v2.services(service.sid).update(**changes)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(changes,)) for changes in settings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    final = sdk().verify.v2.services(service.sid).fetch()
    assert final.tts_name == "Polly.Matthew" and final.code_length == 7
    assert final.totp["issuer"] == "Acme" and final.custom_code_enabled is True
    assert final.do_not_share_warning_enabled is True and final.dtmf_input_required is False
    record = json.loads(app.extensions["ivr"].redis.get(f"ivr:{{services}}:service:{service.sid}"))
    assert record["revision"] == rounds * len(settings)


def test_a_services_name_is_said_even_where_the_greeting_is_recorded(
    make_app, tmp_path, twilio_api
):
    """A recorded greeting says the deployment's own company name: a Service's call speaks
    its own name in TTS instead, while the default Service's call still plays the recording."""
    folder = tmp_path / "voice_prompts"
    folder.mkdir()
    for catalog in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        shutil.copy(catalog, folder)
    write_wav(folder / "audio" / "en-US" / "otp.call.greeting.wav")
    app = make_app(voice_prompts_dir=str(folder))
    client = app.test_client()
    service = client.post(
        "/v2/Services", data={"FriendlyName": "Acme Bank"}, headers=_basic()
    ).get_json()
    greetings = []
    for service_sid in (service["sid"], app.extensions["ivr"].verify_services.default_sid):
        client.post(
            f"/v2/Services/{service_sid}/Verifications",
            data={"To": TO, "Channel": "call"},
            headers=_basic(),
        )
        call = twilio_api.calls()[-1]
        params = {"CallSid": twilio_api.last_sid, "AccountSid": ACCOUNT_SID, "To": TO}
        greetings.append(twiml(twilio_post(client, call.value("Url"), params)))
    ours, default = greetings
    assert not list(ours.iter("Play")) and "Acme Bank" in " ".join(ours.itertext())
    assert list(default.iter("Play")), "the default Service's call plays the recording"
