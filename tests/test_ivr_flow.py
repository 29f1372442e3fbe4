"""The default flow, end to end: signed webhooks in, TwiML out, codes caught at the stand-in
for Twilio's REST API, in English and Spanish."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from redis.cluster import RedisCluster

from ivr.simulator import CallTranscript, PhoneSimulator
from tests.conftest import AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL, spoken, twilio_post, twiml

ON_FILE = "+14155550161"
OTHER_PHONE = "+14155550177"
ACCOUNT = "12345678"
VOICE_ONLY_ACCOUNT = "87654321"
VOICE_ONLY_PHONE = "+14155550142"
ENGLISH, SPANISH = "1", "2"
ACCOUNT_HELP = "1"


@pytest.fixture
def ivr_app(app, api):
    api.client.put(
        f"/v1/customers/{ACCOUNT}",
        json={"phone": ON_FILE, "name": "Ada Lovelace", "sms": True},
        headers=api.headers,
    )
    api.client.put(
        f"/v1/customers/{VOICE_ONLY_ACCOUNT}",
        json={"phone": VOICE_ONLY_PHONE, "name": "Grace Hopper", "sms": False},
        headers=api.headers,
    )
    # An ordinary weekday, away from the default flow's holidays.
    app.extensions["ivr"].flows.clock = lambda: datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    return app


class Caller:
    """A phone calling our number; `code` in the keys types what the phone on file received."""

    def __init__(self, app, twilio_api):
        self.app = app
        self.twilio_api = twilio_api
        self.phone = PhoneSimulator(app, AUTH_TOKEN)

    def call(self, keys, from_=ON_FILE) -> CallTranscript:
        remaining = list(keys)

        def press(_transcript: CallTranscript) -> str | None:
            pressed = remaining.pop(0) if remaining else None
            if pressed == "code":
                return self.received_code() + "#"
            return pressed or None

        return self.phone.call(
            f"{PUBLIC_BASE_URL}/voice/incoming", from_=from_, to=CALLER_ID, keys=press
        )

    def received_code(self) -> str:
        """The code as the phone on file got it: the SMS text, or the voice call's reading."""
        sent = self.twilio_api.requests[-1]
        if sent.path.endswith("/Messages.json"):
            return re.search(r"\d{6}", sent.value("Body")).group(0)
        heard = self.phone.call(
            sent.value("Url"),
            from_=sent.value("From"),
            to=sent.value("To"),
            keys=["5"],
            call_sid=self.twilio_api.last_sid,
            direction="outbound-api",
        )
        return re.search(r"(?:\d ){5}\d", " ".join(heard.spoken)).group(0).replace(" ", "")


@pytest.fixture
def caller(ivr_app, twilio_api):
    return Caller(ivr_app, twilio_api)


def last_handover(transcript: CallTranscript) -> dict:
    event = transcript.events[-1]
    assert event.kind == "enqueue", transcript.to_dict()
    return event.attributes


def said(transcript: CallTranscript) -> str:
    return " ".join(transcript.spoken)


def test_a_caller_from_the_phone_on_file_is_verified_and_queued(caller, twilio_api):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "code"])
    text = said(transcript)
    assert "Thank you for calling Acme" in text
    assert "ending in 6 1" in text
    assert "are verified" in text
    assert transcript.ended_by == "enqueue"
    [sms] = twilio_api.messages()
    assert sms.value("To") == ON_FILE
    assert transcript.events[-1].text == "support"


def test_from_another_phone_the_account_is_asked_and_the_code_goes_to_the_phone_on_file(
    caller, twilio_api
):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, ACCOUNT + "#", "code"], from_=OTHER_PHONE)
    text = said(transcript)
    assert "enter your account number" in text
    assert "are verified" in text
    [sms] = twilio_api.messages()
    assert sms.value("To") == ON_FILE, "never to the calling phone"


def test_three_wrong_codes_hand_the_caller_over_unverified(caller, ivr_app):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "000000#", "111111#", "222222#"])
    text = said(transcript)
    assert text.count("not right") == 2
    assert "could not verify you" in text
    assert transcript.ended_by == "enqueue"
    summary = ivr_app.extensions["ivr"].flows.states.load(transcript.call_sid).summary()
    assert summary["verified"] is False
    assert summary["customer_id"] == ACCOUNT


def test_the_right_code_marks_the_call_verified(caller, ivr_app):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "code"])
    summary = ivr_app.extensions["ivr"].flows.states.load(transcript.call_sid).summary()
    assert summary | {"node": None} == {
        "flow": "default",
        "node": None,
        "language": "en-US",
        "verified": True,
        "customer_id": ACCOUNT,
        "customer_name": "Ada Lovelace",
        "identified_by": "caller_id",
        "auth_method": "sms_otp",
    }


def test_a_customer_without_sms_gets_the_code_by_voice_call(caller, twilio_api):
    keys = [ENGLISH, ACCOUNT_HELP, VOICE_ONLY_ACCOUNT + "#", "code"]
    transcript = caller.call(keys, from_=OTHER_PHONE)
    assert "sent a code to the phone we have on file" in said(transcript)
    assert "ending in" not in said(transcript), "not read to someone who typed an account"
    assert "are verified" in said(transcript)
    assert twilio_api.calls()[0].value("To") == VOICE_ONLY_PHONE
    assert not twilio_api.messages()


def test_no_code_call_goes_to_the_line_the_caller_is_on(caller, twilio_api):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP], from_=VOICE_ONLY_PHONE)
    assert "cannot send a code to the phone you are calling from" in said(transcript)
    assert transcript.ended_by == "enqueue"
    assert not twilio_api.requests


def test_ivr_codes_never_mix_with_an_apps_verifications(caller, api, twilio_api):
    """An app's pending verification for the same phone is neither re-sent, checked nor
    canceled by a caller typing that customer's account number."""
    app_verification = api.start(to=ON_FILE, channel="sms").get_json()
    caller.call(
        [ENGLISH, ACCOUNT_HELP, ACCOUNT + "#", "000000#", "111111#", "222222#"], from_=OTHER_PHONE
    )
    ivr_sms = twilio_api.messages()[-1]
    assert twilio_api.messages()[0].value("Body") != ivr_sms.value("Body"), "a code of its own"
    still = api.get(f"/v1/verifications/{app_verification['sid']}").get_json()
    assert still["status"] == "pending"
    assert still["check_attempts"] == 0, "the caller's wrong codes were checked elsewhere"


def test_the_whole_flow_speaks_spanish_once_chosen(caller):
    transcript = caller.call([SPANISH, ACCOUNT_HELP, "code"])
    after_choice = [e for e in transcript.events if e.kind == "say"][3:]
    assert after_choice, transcript.to_dict()
    assert {e.attributes["language"] for e in after_choice} == {"es-ES"}
    assert "su identidad está verificada" in said(transcript)


def test_a_caller_on_file_with_a_language_is_not_asked_for_it(caller, api, twilio_api):
    """The customer record's locale chooses the prompts' language: a known caller goes
    straight to the menu, in their language, and reaches the agent with two answers."""
    api.put(f"/v1/customers/{ACCOUNT}", {"phone": ON_FILE, "name": "Ada", "locale": "es-ES"})
    transcript = caller.call([ACCOUNT_HELP, "code"])
    says = [e for e in transcript.events if e.kind == "say"]
    assert "For English" not in said(transcript) and "Para español" not in said(transcript)
    assert {e.attributes["language"] for e in says[1:]} == {"es-ES"}
    assert "su identidad está verificada" in said(transcript)
    assert transcript.ended_by == "enqueue"
    assert [e.kind for e in transcript.events].count("keys") == 2


@pytest.mark.parametrize("locale", [None, "it-IT"])
def test_a_caller_whose_record_names_no_offered_language_is_asked(caller, api, locale):
    api.put(f"/v1/customers/{ACCOUNT}", {"phone": ON_FILE, "name": "Ada", "locale": locale})
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "code"])
    assert "For English, press 1" in said(transcript)
    assert transcript.ended_by == "enqueue"


def test_an_unknown_caller_is_asked_for_the_language(caller):
    transcript = caller.call([ENGLISH, "", "", ""], from_="+14155550199")
    assert "For English, press 1" in said(transcript)


def test_silence_at_the_menu_repeats_it_short_then_says_goodbye(caller):
    transcript = caller.call([ENGLISH, "", "", ""])
    text = said(transcript)
    assert text.count("For help with your account") == 1, "the long greeting once"
    assert text.count("For account help, press 1") == 2, "then the short one"
    assert text.endswith("Thank you for calling. Goodbye.")
    assert transcript.ended_by == "hangup"


def test_wrong_keys_at_the_menu_are_told_and_end_after_three(caller):
    transcript = caller.call([ENGLISH, "7", "8", "5"])
    assert said(transcript).count("not one of the options") == 3
    assert transcript.ended_by == "hangup"


def test_prompts_before_a_question_are_nested_in_its_gather_for_barge_in(ivr_app):
    root = twiml(
        twilio_post(
            ivr_app.test_client(),
            "/voice/incoming",
            {"CallSid": "CA" + "1" * 32, "From": ON_FILE, "To": CALLER_ID},
        )
    )
    assert [child.tag for child in root] == ["Gather"]
    gather = root.find("Gather")
    assert "Thank you for calling Acme" in " ".join(gather.itertext())
    action = urlsplit(gather.get("action"))
    assert f"{action.scheme}://{action.netloc}{action.path}" == f"{PUBLIC_BASE_URL}/voice/flow/1"
    assert set(parse_qs(action.query)) == {"s"}, "the sealed state, and nothing else"
    assert gather.get("actionOnEmptyResult") == "true"


def test_a_replayed_step_changes_nothing(ivr_app):
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "2" * 32, "From": ON_FILE, "To": CALLER_ID}
    twilio_post(client, "/voice/incoming", params)
    first = twilio_post(client, "/voice/flow/1", params | {"Digits": ENGLISH}).get_data()
    again = twiml(twilio_post(client, "/voice/flow/1", params | {"Digits": SPANISH}))
    state = ivr_app.extensions["ivr"].flows.states.load(params["CallSid"])
    assert state.locale == "en-US" and state.step == 2
    assert urlsplit(again.find("Gather").get("action")).path == "/voice/flow/2"
    assert b"/voice/flow/2?s=" in first


@pytest.mark.parametrize("digits", ["", "x" * 40, "<Say>", "\u202e1", "99999999999999999999"])
def test_garbage_digits_never_break_the_call(ivr_app, digits):
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "3" * 32, "From": ON_FILE, "To": CALLER_ID}
    twilio_post(client, "/voice/incoming", params)
    root = twiml(twilio_post(client, "/voice/flow/1", params | {"Digits": digits}))
    assert root.find("Gather") is not None or root[-1].tag == "Hangup"


def test_an_unknown_call_goes_where_the_flow_says_on_error(ivr_app):
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "4" * 32, "From": ON_FILE, "To": CALLER_ID, "Digits": "1"}
    root = twiml(twilio_post(client, "/voice/flow/7", params))
    assert "Sorry, something went wrong" in " ".join(root.itertext())
    assert root.find("Enqueue").text == "support", "the default flow's on_error: an agent"
    garbage = twiml(twilio_post(client, "/voice/flow/1", {"Digits": "1"}))
    assert garbage[-1].tag == "Hangup"


def test_when_redis_fails_mid_call_the_caller_goes_to_the_flows_on_error_agent(make_app):
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    root = twiml(
        twilio_post(
            app.test_client(),
            "/voice/incoming",
            {"CallSid": "CA" + "5" * 32, "From": ON_FILE, "To": CALLER_ID},
        )
    )
    assert "something went wrong" in " ".join(root.itertext())
    assert root.find("Enqueue").text == "support"


def test_taskrouter_attributes_carry_verified_and_the_customer(make_app, tmp_path, api, twilio_api):
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "bank.yaml").write_text(
        """
default: true
start: who
nodes:
  who: {type: identify, found: auth, not_found: agent}
  auth: {type: authenticate, success: agent, failure: agent}
  agent:
    type: agent
    queue: support
    workflow_sid: WW0123456789abcdef0123456789abcdef
    attributes: {skill: cards}
"""
    )
    app = make_app(flows_dir=str(flows))
    app.test_client().put(
        f"/v1/customers/{ACCOUNT}",
        json={"phone": ON_FILE, "name": "Ada Lovelace"},
        headers=api.headers,
    )
    caller = Caller(app, twilio_api)
    transcript = caller.call(["code"])
    attributes = last_handover(transcript)
    assert attributes["workflowSid"] == "WW0123456789abcdef0123456789abcdef"
    task = json.loads(attributes["task"])
    assert task["verified"] is True
    assert task["customer_id"] == ACCOUNT
    assert task["auth_method"] == "sms_otp"
    assert task["identified_by"] == "caller_id"
    assert task["skill"] == "cards"
    assert task["language"] == "en-US"


def test_twilio_asking_again_for_an_answered_call_repeats_the_question(ivr_app):
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "7" * 32, "From": ON_FILE, "To": CALLER_ID}
    first = twiml(twilio_post(client, "/voice/incoming", params))
    again = twiml(twilio_post(client, "/voice/incoming", params))
    assert path_of(again.find("Gather").get("action")) == path_of(
        first.find("Gather").get("action")
    )
    assert ivr_app.extensions["ivr"].flows.states.load(params["CallSid"]).step == 1


def test_agent_desktops_read_who_is_on_the_call(caller, api):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "code"])
    response = api.get(f"/v1/calls/{transcript.call_sid}")
    assert response.status_code == 200
    assert response.get_json()["verified"] is True
    assert response.get_json()["customer_id"] == ACCOUNT
    assert api.get("/v1/calls/CA" + "0" * 32).status_code == 404
    assert api.get("/v1/calls/not-a-sid").status_code == 400
    assert api.client.get(f"/v1/calls/{transcript.call_sid}").status_code == 401


def test_a_landline_on_file_gets_its_code_by_call_even_if_the_record_says_sms(
    caller, api, twilio_api
):
    api.client.put(
        "/v1/customers/55556666",
        json={"phone": "+442079460958", "name": "Mary Somerville", "sms": True},
        headers=api.headers,
    )
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "55556666#", "code"], from_=OTHER_PHONE)
    assert "are verified" in said(transcript)
    assert twilio_api.calls()[0].value("To") == "+442079460958"
    assert not twilio_api.messages()


def test_silence_at_the_code_question_asks_again_without_calling_it_wrong(caller):
    transcript = caller.call([ENGLISH, ACCOUNT_HELP, "", "code"])
    text = said(transcript)
    assert "not right" not in text
    assert "Please enter your code" in text
    assert "are verified" in text


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_a_replayed_sealed_step_changes_nothing_and_repeats_the_question(ivr_app):
    """The step's own URL (state sealed in it) posted twice: the second finds the call moved on."""
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "8" * 32, "From": ON_FILE, "To": CALLER_ID}
    action = twiml(twilio_post(client, "/voice/incoming", params)).find("Gather").get("action")
    twiml(twilio_post(client, action, params | {"Digits": ENGLISH}))
    again = twiml(twilio_post(client, action, params | {"Digits": SPANISH}))
    state = ivr_app.extensions["ivr"].flows.states.load(params["CallSid"])
    assert state.locale == "en-US" and state.step == 2
    assert path_of(again.find("Gather").get("action")) == "/voice/flow/2"
    assert "To hear these options again" not in spoken(again), "the short greeting: a repeat"


def test_a_replayed_authenticate_step_neither_checks_nor_sends(ivr_app, twilio_api):
    """Side effects wait until the sealed state is confirmed current: a replayed wrong code
    costs no try, and nothing is sent again."""
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "9" * 32, "From": ON_FILE, "To": CALLER_ID}
    action = twiml(twilio_post(client, "/voice/incoming", params)).find("Gather").get("action")
    for digits in (ENGLISH, ACCOUNT_HELP):
        root = twiml(twilio_post(client, action, params | {"Digits": digits}))
        action = root.find("Gather").get("action")
    assert "a code to your phone" in spoken(root)
    sent = len(twilio_api.requests)
    wrong = twiml(twilio_post(client, action, params | {"Digits": "000000#"}))
    assert "that code is not right" in spoken(wrong)
    replayed = twiml(twilio_post(client, action, params | {"Digits": "000000#"}))
    assert len(twilio_api.requests) == sent, "nothing sent again"
    state = ivr_app.extensions["ivr"].flows.states.load(params["CallSid"])
    assert state.here["failures"] == 1, "the replay counted no try"
    assert path_of(replayed.find("Gather").get("action")) == f"/voice/flow/{state.step}"


def test_a_tampered_or_foreign_sealed_state_is_ignored_and_redis_answers(ivr_app):
    client = ivr_app.test_client()
    mine = {"CallSid": "CA" + "a" * 32, "From": ON_FILE, "To": CALLER_ID}
    other = {"CallSid": "CA" + "b" * 32, "From": OTHER_PHONE, "To": CALLER_ID}
    twiml(twilio_post(client, "/voice/incoming", mine))
    foreign = twiml(twilio_post(client, "/voice/incoming", other)).find("Gather").get("action")
    token = parse_qs(urlsplit(foreign).query)["s"][0]
    states = ivr_app.extensions["ivr"].flows.states
    for bad in (token, token[:-4] + "AAAA", "not-a-token", "x" * 5000):
        step = states.load(mine["CallSid"]).step
        root = twiml(twilio_post(client, f"/voice/flow/{step}?s={bad}", mine | {"Digits": "9"}))
        assert root.find("Gather") is not None
        assert states.load(mine["CallSid"]).step == step + 1, "my call's own state answered"
    assert states.load(mine["CallSid"]).caller == ON_FILE, "never the other call's state"
    assert ivr_app.extensions["ivr"].flows.states.load(other["CallSid"]).step == 1


def test_a_menu_step_makes_one_redis_round_trip(ivr_app, redis_client):
    """The state comes sealed in the step's URL: the save's compare-and-set is the only call."""
    client = ivr_app.test_client()
    params = {"CallSid": "CA" + "c" * 32, "From": ON_FILE, "To": CALLER_ID}
    action = twiml(twilio_post(client, "/voice/incoming", params)).find("Gather").get("action")
    root = twiml(twilio_post(client, action, params | {"Digits": ENGLISH}))
    before = command_calls(redis_client)
    root = twiml(twilio_post(client, root.find("Gather").get("action"), params | {"Digits": "9"}))
    after = command_calls(redis_client)
    assert "To hear these options again" in spoken(root), "the menu asked anew"
    sent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert sent.get("evalsha") == 1, "one script: the compare-and-set save"
    assert sent.get("hmget", 0) == 0 and sent.get("hget") == 1, "no read but the script's own"


def command_calls(client) -> dict[str, int]:
    """How many times the server (a cluster: all its masters) ran each command, scripts' own
    commands included."""
    if isinstance(client, RedisCluster):
        per_node = client.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values()
    else:
        per_node = [client.info("commandstats")]
    counted: dict[str, int] = {}
    for stats in per_node:
        for name, numbers in stats.items():
            key = name.removeprefix("cmdstat_")
            counted[key] = counted.get(key, 0) + numbers["calls"]
    return counted


def test_a_call_whose_state_is_too_big_for_a_url_goes_on_through_redis(make_app, tmp_path):
    """Collected digits fill the state past what a URL may carry: no sealed copy is offered,
    and each step reads Redis instead."""
    flows = tmp_path / "flows"
    flows.mkdir()
    collects = "\n".join(
        f"  c{i}: {{type: collect, prompt: flow.identify.ask_account, max_digits: 30,"
        f" store_as: v{i}, next: c{i + 1}, on_failure: c12}}"
        for i in range(12)
    )
    (flows / "long.yaml").write_text(
        f"default: true\nstart: c0\nnodes:\n{collects}\n"
        "  c12: {type: hangup, prompt: flow.goodbye}\n"
    )
    app = make_app(flows_dir=str(flows))
    client = app.test_client()
    params = {"CallSid": "CA" + "d" * 32, "From": ON_FILE, "To": CALLER_ID}
    root = twiml(twilio_post(client, "/voice/incoming", params))
    sealed_all_along = True
    typed = [f"{secrets.randbelow(10**30):030d}" for _ in range(12)]  # zlib cannot shrink
    for digits in typed:
        action = root.find("Gather").get("action")
        sealed_all_along &= "?s=" in action
        root = twiml(twilio_post(client, action, params | {"Digits": digits}))
    assert not sealed_all_along, "the state outgrew the URL"
    assert root[-1].tag == "Hangup"
    state = app.extensions["ivr"].flows.states.load(params["CallSid"])
    assert [state.variables[f"v{i}"] for i in range(12)] == typed
