"""Missed-call verification, end to end: the app opens one through the API, the user's phone
rings our number (a signed Twilio webhook), we reject the call unanswered and the caller ID
approves the verification, if it can be trusted."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Api, twilio_post, twiml, verification_key

MISSED_CALL_NUMBER = "+14155550111"
OTHER_POOL_NUMBER = "+14155550112"
USER = "+14155550123"
STRANGER = "+14155550199"
CALL_SID = "CA" + "5" * 32


@pytest.fixture
def app(make_app):
    return make_app(missed_call_numbers=f"{MISSED_CALL_NUMBER},{OTHER_POOL_NUMBER}")


def ring(
    client, caller: str = USER, to: str = MISSED_CALL_NUMBER, call_sid: str = "", **extra: str
):
    """The user's phone rings our number: Twilio's voice webhook, signed (a new call each time,
    unless `call_sid` says which)."""
    params = {
        "CallSid": call_sid or "CA" + secrets.token_hex(16),
        "From": caller,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        **extra,
    }
    return twilio_post(client, "/voice/missed-call", params)


def assert_rejected_busy(response) -> None:
    """The first verb, and the only one: <Reject reason="busy">. Twilio never answers."""
    root = twiml(response)
    assert [child.tag for child in root] == ["Reject"]
    assert root[0].get("reason") == "busy"


def start(api: Api, to: str = USER) -> dict:
    response = api.start(to=to, channel="missed_call")
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_the_app_gets_a_number_to_show_and_nothing_is_sent(api, twilio_api):
    before = datetime.now(UTC)
    verification = start(api)
    assert verification["channel"] == "missed_call"
    assert verification["status"] == "pending"
    assert verification["call_to"] in (MISSED_CALL_NUMBER, OTHER_POOL_NUMBER)
    expires = datetime.fromisoformat(verification["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - before <= timedelta(minutes=5, seconds=1)
    assert verification["caller_id_attestation"] is None
    assert twilio_api.requests == [], "no call, no SMS: the user does the calling"


def test_the_users_call_is_rejected_and_approves_the_verification(api, client):
    verification = start(api)
    response = ring(
        client, to=verification["call_to"], call_sid=CALL_SID, StirVerstat="TN-Validation-Passed-A"
    )
    assert_rejected_busy(response)
    seen = api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "approved" and seen["valid"] is True
    assert seen["caller_id_attestation"] == "A"
    [attempt] = seen["send_attempts"]
    assert attempt["status"] == "received" and attempt["provider_sid"] == CALL_SID


def test_a_call_without_stir_shaken_approves_unless_a_level_is_required(api, client, make_app):
    verification = start(api)
    assert_rejected_busy(ring(client, to=verification["call_to"]))
    seen = api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "approved" and seen["caller_id_attestation"] == "none"


@pytest.mark.parametrize(
    "verstat", ["TN-Validation-Failed-A", "TN-Validation-Failed", "No-TN-Validation", "garbage"]
)
def test_a_caller_id_that_failed_validation_never_approves(api, client, verstat):
    verification = start(api)
    assert_rejected_busy(ring(client, to=verification["call_to"], StirVerstat=verstat))
    seen = api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "pending", "a spoofer cannot spoil the real user's verification"
    assert seen["caller_id_attestation"] == "failed"
    assert seen["send_attempts"][-1]["status"] == "refused"
    # The real user then rings, with a good attestation: approved.
    real = ring(client, to=verification["call_to"], StirVerstat="TN-Validation-Passed-B")
    assert_rejected_busy(real)
    seen = api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "approved" and seen["caller_id_attestation"] == "B"


def test_a_policy_can_require_attestation_a(make_app):
    app = make_app(missed_call_number=MISSED_CALL_NUMBER, missed_call_min_attestation="A")
    client = app.test_client()
    api = Api(client)
    sid = start(api)["sid"]
    for weaker in ("TN-Validation-Passed-B", "TN-Validation-Passed-C", ""):
        extra = {"StirVerstat": weaker} if weaker else {}
        assert_rejected_busy(ring(client, **extra))
        assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "pending"
    assert_rejected_busy(ring(client, StirVerstat="TN-Validation-Passed-A"))
    assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "approved"


def test_a_strangers_call_is_rejected_the_same_way_and_counted(api, client):
    verification = start(api)
    assert_rejected_busy(ring(client, caller=STRANGER, to=verification["call_to"]))
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "pending"
    outcomes = api.get("/v1/stats/missed-calls").get_json()["outcomes"]
    assert outcomes == {"nothing_pending": 1}


def test_ringing_another_of_our_numbers_does_not_approve(api, client):
    verification = start(api)
    other = next(n for n in (MISSED_CALL_NUMBER, OTHER_POOL_NUMBER) if n != verification["call_to"])
    assert_rejected_busy(ring(client, to=other))
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "pending"
    assert api.get("/v1/stats/missed-calls").get_json()["outcomes"] == {"nothing_pending": 1}


def test_a_replayed_call_changes_nothing(api, client):
    verification = start(api)
    first = ring(client, to=verification["call_to"], call_sid=CALL_SID)
    again = ring(client, to=verification["call_to"], call_sid=CALL_SID)
    assert first.get_data() == again.get_data()
    seen = api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "approved" and len(seen["send_attempts"]) == 1
    assert api.get("/v1/stats/missed-calls").get_json()["outcomes"] == {
        "approved": 1,
        "replay": 1,
    }


def test_a_captured_call_replayed_later_never_approves_a_new_verification(api, client):
    """Twilio's signature has no timestamp: each CallSid is taken once, whatever came of it."""
    first = start(api)
    ring(client, to=first["call_to"], call_sid=CALL_SID)
    later = start(api)
    replayed = ring(client, to=later["call_to"], call_sid=CALL_SID)
    assert_rejected_busy(replayed)
    assert api.get(f"/v1/verifications/{later['sid']}").get_json()["status"] == "pending"


def test_a_call_after_the_window_does_not_approve(api, client, redis_client):
    verification = start(api)
    sid = verification["sid"]
    # Move the verification's expiry into the past (the shortest window is 30 s).
    key = verification_key(redis_client, sid)
    redis_client.hset(key, "x", str(int(redis_client.time()[0]) * 1000 - 1000))
    assert_rejected_busy(ring(client, to=verification["call_to"]))
    assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "expired"


def test_asking_again_is_a_new_verification_on_another_number(api, client):
    """Whoever holds a missed-call sid is approved by the phone's call: a second asker (another
    session, maybe an attacker's) never gets the first one's. Each waits on its own number."""
    first = start(api)
    second = start(api)
    assert second["sid"] != first["sid"] and second["call_to"] != first["call_to"]
    third = api.start(to=USER, channel="missed_call")
    assert third.status_code == 409
    assert third.get_json()["type"].endswith("missed_call_waiting")
    assert_rejected_busy(ring(client, to=second["call_to"]))  # the user rings what they saw
    assert api.get(f"/v1/verifications/{second['sid']}").get_json()["status"] == "approved"
    assert api.get(f"/v1/verifications/{first['sid']}").get_json()["status"] == "pending"
    assert start(api)["call_to"] == second["call_to"], "a number freed is offered again"


def test_other_channels_neither_replace_nor_resend_a_missed_call(api):
    missed = start(api)
    sms = api.start(to=USER, channel="sms")
    assert sms.status_code == 201 and sms.get_json()["sid"] != missed["sid"]
    assert api.get(f"/v1/verifications/{missed['sid']}").get_json()["status"] == "pending"


def test_no_code_checks_a_missed_call_verification(api):
    verification = start(api)
    response = api.check("123456", sid=verification["sid"])
    assert response.status_code == 409
    assert response.get_json()["type"].endswith("not_checkable")
    assert api.check("123456", to=USER).status_code == 404, "no code is pending for the number"
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "pending"


def test_the_channel_is_refused_where_no_number_is_configured(make_app):
    api = Api(make_app().test_client())
    response = api.start(to=USER, channel="missed_call")
    assert response.status_code == 400
    assert response.get_json()["type"].endswith("channel_unavailable")
    assert "MISSED_CALL_NUMBER" in response.get_json()["detail"]


def test_same_number_policy_and_send_limits_as_calls_and_sms(make_app):
    app = make_app(missed_call_number=MISSED_CALL_NUMBER, send_limit_per_number="2/10m")
    api = Api(app.test_client())
    premium = api.start(to="+19005550123", channel="missed_call")
    assert premium.status_code == 400
    assert premium.get_json()["type"].endswith("number_type_refused")
    assert start(api)["status"] == "pending"
    waiting = api.start(to=USER, channel="missed_call")  # the only number is taken: 409...
    assert waiting.status_code == 409  # ...and it counted as a send: what an attacker repeats
    limited = api.start(to=USER, channel="missed_call")
    assert limited.status_code == 429 and limited.get_json()["scope"] == "number"


@pytest.mark.parametrize(
    "params",
    [
        {},  # nothing at all
        {"CallSid": CALL_SID, "To": MISSED_CALL_NUMBER},  # no From
        {"CallSid": CALL_SID, "From": "anonymous", "To": MISSED_CALL_NUMBER},
        {"CallSid": CALL_SID, "From": "+1", "To": MISSED_CALL_NUMBER},
        {"CallSid": CALL_SID, "From": "x" * 5000, "To": MISSED_CALL_NUMBER},
        {"CallSid": CALL_SID, "From": USER, "To": "+15005550006"},  # not our missed-call number
        {"CallSid": CALL_SID, "From": USER, "To": "sip:x@example.com"},
        {"CallSid": "not-a-sid", "From": USER, "To": MISSED_CALL_NUMBER},
        {"CallSid": CALL_SID, "From": USER, "To": MISSED_CALL_NUMBER, "StirVerstat": "\u202e"},
    ],
)
def test_garbage_is_rejected_and_approves_nothing(api, client, params):
    verification = start(api)
    assert_rejected_busy(twilio_post(client, "/voice/missed-call", params))
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "pending"


def test_unsigned_or_wrongly_signed_calls_are_refused(api, client):
    verification = start(api)
    params = {"CallSid": CALL_SID, "From": USER, "To": verification["call_to"]}
    assert client.post("/voice/missed-call", data=params).status_code == 403
    forged = twilio_post(client, "/voice/missed-call", params, token="not-the-auth-token")
    assert forged.status_code == 403
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "pending"


def test_when_redis_is_down_the_caller_is_still_rejected(make_app):
    app = make_app(missed_call_number=MISSED_CALL_NUMBER, redis_url="redis://127.0.0.1:1/0")
    assert_rejected_busy(ring(app.test_client()))


def test_the_simulated_carrier_path_works_too(make_app):
    app = make_app(
        missed_call_number=MISSED_CALL_NUMBER,
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )
    client = app.test_client()
    api = Api(client)
    verification = start(api)
    token = app.extensions["ivr"].secrets.webhook_auth_token
    params = {"CallSid": CALL_SID, "From": USER, "To": verification["call_to"]}
    assert_rejected_busy(twilio_post(client, "/voice/missed-call", params, token=token))
    assert api.get(f"/v1/verifications/{verification['sid']}").get_json()["status"] == "approved"


@pytest.fixture
def simulated(make_app):
    app = make_app(
        missed_call_number=MISSED_CALL_NUMBER,
        flash_call_accept_weak_odds=True,  # a test pool: a few numbers
        flash_call_numbers="+14155550121,+14155550132",
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )
    return Api(app.test_client())


def test_a_simulated_phone_rings_the_missed_call_number(simulated):
    """What a new user does offline: open a verification, ring the number, read the status."""
    verification = start(simulated)
    call = simulated.post(
        "/v1/simulator/calls",
        {"from": USER, "to": verification["call_to"], "stir_verstat": "TN-Validation-Passed-A"},
    )
    assert call.status_code == 200, call.get_json()
    transcript = call.get_json()
    assert transcript["ended_by"] == "reject"
    assert transcript["events"] == [{"kind": "reject", "text": "", "reason": "busy"}]
    seen = simulated.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert seen["status"] == "approved" and seen["caller_id_attestation"] == "A"


def test_a_simulated_phone_ringing_another_number_reaches_the_ivr(simulated):
    transcript = simulated.post(
        "/v1/simulator/calls", {"from": USER, "to": "+15005550006", "keys": ["1"]}
    ).get_json()
    assert transcript["ended_by"] != "reject"
    assert any(event["kind"] == "say" for event in transcript["events"])


@pytest.mark.parametrize(
    "payload",
    [
        {"to": MISSED_CALL_NUMBER},
        {"from": "anonymous", "to": MISSED_CALL_NUMBER},
        {"from": USER},
        {"from": USER, "to": MISSED_CALL_NUMBER, "keys": "x"},
        {"from": USER, "to": MISSED_CALL_NUMBER, "stir_verstat": 7},
        {"from": USER, "to": ["+1"]},
    ],
)
def test_the_simulator_refuses_garbage_with_a_problem(simulated, payload):
    response = simulated.post("/v1/simulator/calls", payload)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


def test_the_simulator_refuses_a_huge_body_with_413(simulated):
    response = simulated.client.post(
        "/v1/simulator/calls",
        data='{"from": "' + "1" * 100_000 + '"}',
        headers={**simulated.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_the_simulator_is_not_there_with_a_twilio_account(api):
    response = api.post("/v1/simulator/calls", {"from": USER, "to": MISSED_CALL_NUMBER})
    assert response.status_code == 404
