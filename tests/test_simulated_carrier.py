"""With no Twilio account, the whole path works offline through the simulated carrier."""

from __future__ import annotations

import pytest

from tests.conftest import Api

TO = "+14155550123"


@pytest.fixture
def sim_api(simulated_app):
    return Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)


def test_a_voice_verification_completes_offline(sim_api):
    verification = sim_api.start(to=TO, channel="call").get_json()
    assert verification["send_attempts"][0]["status"] == "queued"
    call = sim_api.get("/v1/simulator/outbox").get_json()["items"][0]
    assert call["kind"] == "call" and call["to"] == TO
    assert call["url"].endswith(f"/voice/code/{verification['sid']}/en-US/")

    heard = sim_api.post(f"/v1/simulator/calls/{call['sid']}/answer", {"keys": ["5"]})
    assert heard.status_code == 200
    transcript = heard.get_json()
    says = [e["text"] for e in transcript["events"] if e["kind"] == "say"]
    assert "press any key" in says[0]
    code = says[1].removeprefix("Your code is ").replace(" ", "")
    assert len(code) == 6 and code.isdigit()
    assert says[2].replace(" ", "").endswith(code)
    assert transcript["ended_by"] == "hangup"

    attempt = sim_api.get(f"/v1/verifications/{verification['sid']}").get_json()
    assert attempt["send_attempts"][0]["status"] == "completed"
    assert sim_api.check(code, to=TO).get_json()["valid"] is True


def test_an_unanswered_key_prompt_ends_with_goodbye(sim_api):
    sim_api.start(to=TO, channel="call")
    call = sim_api.get("/v1/simulator/outbox").get_json()["items"][0]
    transcript = sim_api.post(f"/v1/simulator/calls/{call['sid']}/answer").get_json()
    kinds = [e["kind"] for e in transcript["events"]]
    assert kinds == ["say", "timeout", "say", "timeout", "say"]
    assert "did not hear a key" in transcript["events"][-1]["text"]


def test_simulated_sms_shows_in_the_outbox(sim_api):
    verification = sim_api.start(to=TO, channel="sms").get_json()
    assert verification["send_attempts"][0]["status"] == "delivered"
    message = sim_api.get("/v1/simulator/outbox").get_json()["items"][0]
    assert message["kind"] == "sms" and message["to"] == TO
    assert "Acme" in message["body"]
    code = next(w for w in message["body"].replace(".", " ").split() if w.isdigit())
    assert sim_api.check(code, sid=verification["sid"]).get_json()["status"] == "approved"


@pytest.mark.parametrize("keys", [["5x"], "5;1", [5], ["1"] * 21, {"a": 1}, [""]])
def test_bad_keys_are_400(sim_api, keys):
    sim_api.start(to=TO, channel="call")
    call = sim_api.get("/v1/simulator/outbox").get_json()["items"][0]
    response = sim_api.post(f"/v1/simulator/calls/{call['sid']}/answer", {"keys": keys})
    assert response.status_code == 400
    assert response.get_json()["field"] == "keys"


def test_unknown_simulated_calls_are_404(sim_api):
    response = sim_api.post("/v1/simulator/calls/CA123/answer", {"keys": []})
    assert response.status_code == 404


def test_with_a_twilio_account_there_is_no_simulator(api):
    assert api.get("/v1/simulator/outbox").status_code == 404
    assert api.post("/v1/simulator/calls/CA1/answer", {"keys": []}).status_code == 404


def test_the_outbox_survives_a_secret_key_change(make_app, redis_client):
    no_twilio = {"twilio_account_sid": None, "twilio_auth_token": None, "twilio_caller_id": None}
    before = make_app(**no_twilio)
    Api(before.test_client(), before.extensions["ivr"].secrets.api_token).start(
        to=TO, channel="sms"
    )
    after = make_app(**no_twilio, secret_key="another-secret-key-" + "y" * 32)
    api = Api(after.test_client(), after.extensions["ivr"].secrets.api_token)
    outbox = api.get("/v1/simulator/outbox")
    assert outbox.status_code == 200
    assert outbox.get_json()["items"][0]["body"] is None
