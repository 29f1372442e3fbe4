"""The voice channel end to end: API -> Twilio Calls request -> signed webhooks -> check."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from tests.conftest import ACCOUNT_SID, CALLER_ID, PUBLIC_BASE_URL, spoken, twilio_post, twiml

TO = "+14155550123"


def start_call(api, twilio_api, to=TO, **fields):
    response = api.start(to=to, channel="call", **fields)
    assert response.status_code == 201, response.get_json()
    return response.get_json(), twilio_api.calls()[-1]


def call_params(verification, key=None):
    """What Twilio posts for our outbound call (its CallSid is the attempt's provider sid)."""
    params = {
        "CallSid": verification["send_attempts"][-1]["provider_sid"],
        "AccountSid": ACCOUNT_SID,
        "To": verification["to"],
        "From": CALLER_ID,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
    }
    if key is not None:
        params["Digits"] = key
    return params


def code_readings(root: ET.Element) -> list[str]:
    """The codes read in the document, one string per reading (a <Say loop="2"> reads twice)."""
    readings = []
    for say in root.iter("Say"):
        digits = "".join((pause.tail or "").strip() for pause in say.iter("break"))
        if digits:
            readings += [digits] * int(say.get("loop", "1"))
    return readings


def call_url(verification, step=""):
    """A step of the verification call, under the URL the Calls request gave Twilio."""
    return f"/voice/code/{verification['sid']}/{verification['locale']}/{step}"


def press_key(client, verification, key="5"):
    return twiml(
        twilio_post(client, call_url(verification, "reveal"), call_params(verification, key))
    )


def test_calls_api_request_holds_only_an_opaque_id(api, twilio_api):
    verification, call = start_call(api, twilio_api)
    assert call.username == ACCOUNT_SID
    assert call.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert call.value("To") == TO
    assert call.value("From") == CALLER_ID
    url = call.value("Url")
    assert url == f"{PUBLIC_BASE_URL}/voice/code/{verification['sid']}/en-US/"
    assert urlsplit(url).query == ""
    assert call.value("StatusCallback") == f"{PUBLIC_BASE_URL}/voice/status/{verification['sid']}"
    assert call.value("Method") == "POST"
    assert call.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert call.value("Timeout") == "30"
    assert verification["status"] == "pending"
    assert verification["send_attempts"][0]["provider_sid"].startswith("CA")


def test_code_is_not_spoken_before_a_key_press(api, twilio_api, client):
    verification, call = start_call(api, twilio_api)
    root = twiml(twilio_post(client, call.value("Url"), call_params(verification)))
    assert not list(root.iter("say-as"))
    assert not re.search(r"\d", spoken(root))
    gathers = root.findall("Gather")
    assert len(gathers) == 2, "the greeting is offered twice, each waiting for a key"
    for gather in gathers:
        assert gather.attrib == {
            "input": "dtmf",
            "numDigits": "1",
            "finishOnKey": "",
            "timeout": "6",
            "action": "reveal",  # relative: Twilio resolves it to …/<sid>/<locale>/reveal
            "method": "POST",
            "actionOnEmptyResult": "false",
        }
        assert "Acme" in spoken(gather)
        assert "press any key" in spoken(gather)
    assert [child.tag for child in root][-2:] == ["Say", "Hangup"]
    assert "did not hear a key" in spoken(root)


def test_key_press_reads_the_code_digit_by_digit_twice_then_offers_a_repeat(
    api, twilio_api, client
):
    verification, _ = start_call(api, twilio_api)
    root = press_key(client, verification)
    readings = code_readings(root)
    assert len(readings) == 2
    assert readings[0] == readings[1]
    assert re.fullmatch(r"\d{6}", readings[0])
    first = root.find("Say")
    assert first.get("voice") == "Polly.Joanna-Neural" and first.get("language") == "en-US"
    assert first.text == "Your code is"
    pauses = list(first.iter("break"))
    assert [b.get("time") for b in pauses] == ["350ms"] * 6 + ["1s"]
    assert [b.tail for b in pauses] == [*readings[0], None], "a pause before every digit"
    repeat = root.find("Gather")
    assert repeat.get("action") == "reveal?repeat=1"
    assert "press 1" in spoken(repeat)
    assert [child.tag for child in root][-2:] == ["Say", "Hangup"]
    # …and that code checks out, once.
    assert api.check(readings[0], to=TO).get_json() == {
        "sid": verification["sid"],
        "to": TO,
        "status": "approved",
        "valid": True,
    }
    assert api.check(readings[0], sid=verification["sid"]).status_code == 409


def test_six_digit_code_is_fully_heard_within_eight_seconds_of_the_key_press(
    api, twilio_api, client
):
    """Speech-time budget from the TwiML: intro words at 150 wpm, each digit 0.4 s, the pauses
    before each digit (the gap after the last one comes once the code was heard)."""
    verification, _ = start_call(api, twilio_api)
    first = press_key(client, verification).find("Say")
    intro_words = len((first.text or "").split())
    before_digits = [b for b in first.iter("break") if (b.tail or "").strip()]
    pauses = sum(int(b.get("time").removesuffix("ms")) for b in before_digits) / 1000
    digits = len(before_digits)
    assert digits == 6
    assert intro_words * 0.4 + digits * 0.4 + pauses <= 8.0


def test_pressing_1_repeats_the_code_and_any_other_key_says_goodbye(api, twilio_api, client):
    verification, _ = start_call(api, twilio_api)
    code = code_readings(press_key(client, verification))[0]
    url = call_url(verification, "reveal?repeat=1")
    again = twiml(twilio_post(client, url, call_params(verification, "1")))
    assert code_readings(again) == [code, code]
    bye = twiml(twilio_post(client, url, call_params(verification, "7")))
    assert code_readings(bye) == []
    assert "Goodbye" in spoken(bye)
    assert bye[-1].tag == "Hangup"


def test_repeats_are_bounded_per_call(api, twilio_api, client):
    verification, _ = start_call(api, twilio_api)
    press_key(client, verification)
    url = call_url(verification, "reveal?repeat=1")
    for left in (2, 1, 0):
        again = twiml(twilio_post(client, url, call_params(verification, "1")))
        assert code_readings(again)
        assert len(again.findall("Gather")) == (1 if left else 0), "no offer after the last"
    capped = twiml(twilio_post(client, url, call_params(verification, "1")))
    assert code_readings(capped) == []
    assert "no longer available" in spoken(capped)


def test_a_call_we_did_not_place_never_hears_the_code(api, twilio_api, client):
    verification, _ = start_call(api, twilio_api)
    params = call_params(verification, "5") | {"CallSid": "CA" + "f" * 32}
    root = twiml(twilio_post(client, call_url(verification, "reveal"), params))
    assert code_readings(root) == []
    assert "no longer available" in spoken(root)


def test_no_code_is_read_once_the_verification_has_ended(api, twilio_api, client):
    """The answer is static (no Redis): a verification canceled while the phone rang is told
    at the key press, before anything of the code is said."""
    verification, call = start_call(api, twilio_api)
    api.post(f"/v1/verifications/{verification['sid']}/cancel")
    answered = twiml(twilio_post(client, call.value("Url"), call_params(verification)))
    assert not re.search(r"\d", spoken(answered))
    pressed = press_key(client, verification)
    assert code_readings(pressed) == []
    assert "no longer available" in spoken(pressed)
    assert pressed[-1].tag == "Hangup"


def test_locale_follows_the_request_and_else_the_numbers_country(api, twilio_api, client):
    spanish, _ = start_call(api, twilio_api, to="+34612345678", locale="es-ES")
    assert spanish["locale"] == "es-ES"
    root = press_key(client, spanish)
    assert root.find("Say").get("voice") == "Polly.Lucia-Neural"
    assert "Su código es" in spoken(root)
    french, french_call = start_call(api, twilio_api, to="+33612345678")
    assert french["locale"] == "fr-FR"
    answered = twiml(twilio_post(client, french_call.value("Url"), call_params(french)))
    assert answered.find("Gather/Say").get("language") == "fr-FR"
    assert code_readings(press_key(client, french))


def test_call_status_callbacks_update_the_send_attempt_in_order(api, twilio_api, client):
    verification, call = start_call(api, twilio_api)
    status_url = call.value("StatusCallback")
    for status in ("ringing", "in-progress", "completed", "ringing"):  # the last is stale
        response = twilio_post(
            client, status_url, call_params(verification) | {"CallStatus": status}
        )
        assert response.status_code == 204
    attempt = api.get(f"/v1/verifications/{verification['sid']}").get_json()["send_attempts"][0]
    assert attempt["status"] == "completed"


def test_a_failed_call_is_recorded_with_its_error_code(api, twilio_api, client):
    verification, call = start_call(api, twilio_api)
    twilio_post(
        client,
        call.value("StatusCallback"),
        call_params(verification) | {"CallStatus": "failed", "ErrorCode": "32009"},
    )
    attempt = api.get(f"/v1/verifications/{verification['sid']}").get_json()["send_attempts"][0]
    assert (attempt["status"], attempt["error"]) == ("failed", "32009")


def test_replayed_webhooks_change_nothing(api, twilio_api, client):
    """A captured, validly signed request replayed later: status stays, no extra code."""
    verification, call = start_call(api, twilio_api)
    completed = call_params(verification) | {"CallStatus": "completed"}
    twilio_post(client, call.value("StatusCallback"), completed)
    twilio_post(
        client, call.value("StatusCallback"), call_params(verification) | {"CallStatus": "ringing"}
    )
    twilio_post(client, call.value("StatusCallback"), completed)
    attempts = api.get(f"/v1/verifications/{verification['sid']}").get_json()["send_attempts"]
    assert [a["status"] for a in attempts] == ["completed"]
    code = code_readings(press_key(client, verification))[0]
    api.check(code, to=TO)
    replayed = press_key(client, verification)
    assert code_readings(replayed) == [], "no code once the verification is approved"
