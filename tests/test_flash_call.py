"""Flash-call verification, end to end: we ring the user briefly from one of a pool of our
numbers, and the last digits of that number are the code the app checks."""

from __future__ import annotations

import re

import pytest

from ivr.config import ConfigError, load_settings
from tests.conftest import PUBLIC_BASE_URL, Api, twilio_post, twiml

POOL = ("+14155550121", "+14155550132", "+14155550143")
USER = "+14155550123"


@pytest.fixture
def app(make_app):
    return make_app(flash_call_accept_weak_odds=True, flash_call_numbers=",".join(POOL))


def start(api: Api, to: str = USER) -> dict:
    response = api.start(to=to, channel="flash_call")
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_we_ring_the_user_briefly_from_a_pool_number(api, twilio_api):
    verification = start(api)
    assert verification["channel"] == "flash_call"
    assert verification["code_length"] == 4 and verification["status"] == "pending"
    [call] = twilio_api.calls()
    assert call.value("To") == USER
    assert call.value("From") in POOL
    assert int(call.value("Timeout")) <= 20, "a short ring: hung up before anyone answers"
    assert call.value("Url") == f"{PUBLIC_BASE_URL}/voice/flash-call"
    assert call.value("StatusCallback").endswith(f"/voice/status/{verification['sid']}")
    assert verification["send_attempts"][0]["provider_sid"] == twilio_api.last_sid


def test_the_last_digits_of_the_calling_number_approve_once(api, twilio_api):
    verification = start(api)
    code = twilio_api.calls()[-1].value("From")[-4:]
    approved = api.check(code, to=USER)
    assert approved.status_code == 200 and approved.get_json()["valid"] is True
    assert api.check(code, sid=verification["sid"]).status_code == 409, "a code works once"


def test_three_wrong_guesses_end_it(api, twilio_api):
    verification = start(api)
    code = twilio_api.calls()[-1].value("From")[-4:]
    wrong = next(number[-4:] for number in POOL if number[-4:] != code)
    statuses = [api.check(wrong, sid=verification["sid"]).get_json()["status"] for _ in range(3)]
    assert statuses == ["pending", "pending", "max_attempts_reached"]
    assert api.check(code, sid=verification["sid"]).status_code == 409


def test_if_answered_the_call_hangs_up_at_once(client):
    params = {"CallSid": "CA" + "1" * 32, "From": POOL[0], "To": USER, "CallStatus": "in-progress"}
    root = twiml(twilio_post(client, "/voice/flash-call", params))
    assert [child.tag for child in root] == ["Hangup"]
    assert client.post("/voice/flash-call", data=params).status_code == 403, "signed only"


def test_a_resend_rings_again_from_the_same_number(api, twilio_api):
    first = start(api)
    again = start(api)
    assert again["sid"] == first["sid"]
    one, two = twilio_api.calls()
    assert one.value("From") == two.value("From"), "the code stays the same"
    assert len(again["send_attempts"]) == 2


def test_the_code_is_spread_over_the_pool(api, twilio_api):
    callers = set()
    for line in range(100, 130):
        start(api, to=f"+1415555{line:04d}")
        callers.add(twilio_api.calls()[-1].value("From"))
    assert callers == set(POOL), "each number of the pool is used (secrets.choice)"


def test_a_flash_call_and_an_sms_code_for_one_phone_live_side_by_side(api, twilio_api):
    """Neither re-sends nor cancels the other (so nobody can cancel a user's pending code by
    asking for a flash call); a check by number tells them apart by the code's length."""
    flash = start(api)
    sms = api.start(to=USER, channel="sms").get_json()
    assert sms["sid"] != flash["sid"]
    assert api.get(f"/v1/verifications/{flash['sid']}").get_json()["status"] == "pending"
    flash_code = twilio_api.calls()[-1].value("From")[-4:]
    sms_code = re.search(r"\b(\d{6})\b", twilio_api.messages()[-1].value("Body")).group(1)
    assert api.check(flash_code, to=USER).get_json()["sid"] == flash["sid"]
    assert api.check(sms_code, to=USER).get_json()["sid"] == sms["sid"]
    for sid in (flash["sid"], sms["sid"]):
        assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "approved"


def test_same_number_policy_and_limits(make_app):
    api = Api(
        make_app(
            flash_call_accept_weak_odds=True,
            flash_call_numbers=",".join(POOL),
            send_limit_per_number="1/10m",
        ).test_client()
    )
    premium = api.start(to="+19005550123", channel="flash_call")
    assert premium.get_json()["type"].endswith("number_type_refused")
    start(api)
    assert api.start(to=USER, channel="flash_call").status_code == 429


def test_the_channel_is_refused_where_no_pool_is_configured(make_app):
    response = Api(make_app().test_client()).start(to=USER, channel="flash_call")
    assert response.status_code == 400
    assert "FLASH_CALL_NUMBERS" in response.get_json()["detail"]


def test_the_carrier_refusing_the_call_fails_the_verification(api, twilio_api):
    twilio_api.fail_next(status=400, body={"code": 21211, "message": "Invalid 'To' number"})
    response = api.start(to=USER, channel="flash_call")
    assert response.status_code == 400
    assert response.get_json()["type"].endswith("carrier_invalid_number")
    sid = response.get_json()["sid"]
    assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "failed"


def test_the_simulated_carrier_shows_the_caller_id_in_its_outbox(make_app):
    app = make_app(
        flash_call_accept_weak_odds=True,  # a test pool: a few numbers
        flash_call_numbers=",".join(POOL),
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )
    api = Api(app.test_client())
    verification = start(api)
    [call] = api.get("/v1/simulator/outbox").get_json()["items"]
    assert call["kind"] == "call" and call["to"] == USER and call["from"] in POOL
    approved = api.check(call["from"][-4:], sid=verification["sid"]).get_json()
    assert approved["valid"] is True


@pytest.mark.parametrize(
    ("pool", "complaint"),
    [
        ("+14155550121", "at least 2 numbers"),
        ("+14155550121,+14165550121", "end in the same 4 digits"),
        ("+14155550121,not-a-number", "E.164"),
    ],
)
def test_the_pool_is_validated_at_start(pool, complaint):
    with pytest.raises(ConfigError) as refused:
        load_settings({"FLASH_CALL_ACCEPT_WEAK_ODDS": "true", "FLASH_CALL_NUMBERS": pool})
    assert complaint in str(refused.value)


def test_a_ring_longer_than_twenty_seconds_is_refused():
    with pytest.raises(ConfigError, match="FLASH_CALL_RING_SECONDS"):
        load_settings(
            {
                "FLASH_CALL_ACCEPT_WEAK_ODDS": "true",
                "FLASH_CALL_NUMBERS": ",".join(POOL),
                "FLASH_CALL_RING_SECONDS": "25",
            }
        )


def test_a_five_digit_code_works_too(make_app, twilio_api):
    pool = "+14155550121,+14155550232"
    api = Api(
        make_app(
            flash_call_accept_weak_odds=True, flash_call_numbers=pool, flash_call_code_length=5
        ).test_client()
    )
    verification = start(api)
    assert verification["code_length"] == 5
    code = twilio_api.calls()[-1].value("From")[-5:]
    assert api.check(code, to=USER).get_json()["valid"] is True


@pytest.mark.parametrize("length", ["3", "6"])
def test_a_code_length_a_check_could_confuse_is_refused(length):
    """Under 4 no check accepts it; 6 or more could be a call or SMS code's length."""
    with pytest.raises(ConfigError, match="FLASH_CALL_CODE_LENGTH"):
        load_settings(
            {
                "FLASH_CALL_ACCEPT_WEAK_ODDS": "true",
                "FLASH_CALL_NUMBERS": ",".join(POOL),
                "FLASH_CALL_CODE_LENGTH": length,
            }
        )


def test_a_resend_after_the_pool_changed_starts_anew_from_the_new_pool(make_app, twilio_api):
    """No number of the new pool ends in the pending code: that verification ends (its re-send
    recorded as failed) and a new one rings from the new pool."""
    old_api = Api(
        make_app(flash_call_accept_weak_odds=True, flash_call_numbers=",".join(POOL)).test_client()
    )
    old = start(old_api)
    new_pool = ("+14155550654", "+14155550765")
    new_api = Api(
        make_app(
            flash_call_accept_weak_odds=True, flash_call_numbers=",".join(new_pool)
        ).test_client()
    )
    fresh = start(new_api)
    assert fresh["sid"] != old["sid"]
    assert twilio_api.calls()[-1].value("From") in new_pool
    ended = new_api.get(f"/v1/verifications/{old['sid']}").get_json()
    assert ended["status"] == "canceled"
    assert ended["send_attempts"][-1]["status"] == "failed"


def test_a_pool_a_guesser_beats_more_than_one_time_in_a_hundred_is_refused_at_start():
    """3 attempts against 3 numbers: every guesser passes. The app does not start on that."""
    with pytest.raises(ConfigError) as refused:
        load_settings({"FLASH_CALL_NUMBERS": ",".join(POOL)})
    said = str(refused.value)
    assert "FLASH_CALL_NUMBERS: with 3 numbers and 3 attempts" in said
    assert "guesses the code in 100% of flash-call verifications" in said
    assert "use 300 or more numbers" in said and "FLASH_CALL_ACCEPT_WEAK_ODDS=true" in said


def test_the_start_log_says_the_odds_and_the_override_is_a_warning(make_app, caplog):
    with caplog.at_level("INFO", logger="ivr.app"):
        make_app(flash_call_accept_weak_odds=True, flash_call_numbers=",".join(POOL))
    (weak,) = [r for r in caplog.records if r.getMessage().startswith("flash calls:")]
    assert weak.levelname == "WARNING"
    assert "passes 1e+02 %" not in weak.getMessage()
    assert "passes 100 %" in weak.getMessage() and "accepted by" in weak.getMessage()
    caplog.clear()
    big_pool = ",".join(f"+1415555{line:04d}" for line in range(100, 400))
    with caplog.at_level("INFO", logger="ivr.app"):
        make_app(flash_call_numbers=big_pool, flash_call_max_attempts=3)
    (strong,) = [r for r in caplog.records if r.getMessage().startswith("flash calls:")]
    assert strong.levelname == "INFO" and "passes 1 %" in strong.getMessage()
