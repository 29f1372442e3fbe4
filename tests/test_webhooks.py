"""Every webhook checks Twilio's signature, and no input makes a caller hear an error."""

from __future__ import annotations

import secrets

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_BASE_URL, spoken, twilio_post, twiml

SID = "VE" + "0" * 32
CALL_SID = "CA" + "a" * 32
WEBHOOKS = [
    "/voice/incoming",
    f"/voice/code/{SID}/en-US/",
    f"/voice/code/{SID}/en-US/reveal",
    f"/voice/code/{SID}/en-US/reveal?repeat=1",
    f"/voice/code/{SID}/en-US/VA{'0' * 32}/",  # a Verify Service's code call
    f"/voice/code/{SID}/en-US/VA{'0' * 32}/reveal?answered=1",
    f"/voice/code/{SID}/en-US/named/",  # the default Service's, with a name of its own
    f"/voice/status/{SID}",
    f"/sms/status/{SID}",
    "/voice/flow/1",
    "/voice/flow/1/dial",
    "/voice/flow/1?s=not-a-sealed-state",
    "/voice/missed-call",
    "/voice/flash-call",
]
PARAMS = {
    "CallSid": CALL_SID,
    "AccountSid": ACCOUNT_SID,
    "From": "+14155550123",
    "To": "+14155550100",
    "Digits": "5",
    "CallStatus": "ringing",
}


@pytest.mark.parametrize("path", WEBHOOKS)
def test_unsigned_requests_are_403(client, path):
    response = client.post(path, data=PARAMS)
    assert response.status_code == 403
    assert b"<Say>" not in response.data


@pytest.mark.parametrize("signature", ["é" * 28, "\u2603", "x" * 10_000, "=", " "])
def test_garbage_signatures_are_403(client, signature):
    response = client.post(
        "/voice/incoming", data=PARAMS, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403


@pytest.mark.parametrize("path", WEBHOOKS)
def test_requests_signed_with_another_token_are_403(client, path):
    assert twilio_post(client, path, PARAMS, token="someone-elses-token").status_code == 403


@pytest.mark.parametrize("path", WEBHOOKS)
def test_tampered_parameters_break_the_signature(client, path):
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + path, PARAMS)
    tampered = PARAMS | {"From": "+14155559999"}
    response = client.post(
        path, data=tampered, base_url=PUBLIC_BASE_URL, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403


def test_signature_is_checked_against_public_base_url_not_the_internal_host(client):
    """Behind a proxy Flask sees http://10.0.0.5:8000; Twilio signed the public https URL."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(
        PUBLIC_BASE_URL + "/voice/incoming", PARAMS
    )
    response = client.post(
        "/voice/incoming",
        data=PARAMS,
        base_url="http://10.0.0.5:8000",
        headers={"X-Twilio-Signature": signature},
    )
    assert response.status_code == 200
    internal = RequestValidator(AUTH_TOKEN).compute_signature(
        "http://10.0.0.5:8000/voice/incoming", PARAMS
    )
    response = client.post(
        "/voice/incoming",
        data=PARAMS,
        base_url="http://10.0.0.5:8000",
        headers={"X-Twilio-Signature": internal},
    )
    assert response.status_code == 403


def test_simulated_mode_still_checks_signatures(simulated_app):
    client = simulated_app.test_client()
    assert client.post("/voice/incoming", data=PARAMS).status_code == 403
    assert twilio_post(client, "/voice/incoming", PARAMS).status_code == 403  # real token
    token = simulated_app.extensions["ivr"].secrets.webhook_auth_token
    assert token != AUTH_TOKEN
    assert twilio_post(client, "/voice/incoming", PARAMS, token=token).status_code == 200


def new_call(**fields: str) -> dict[str, str]:
    """Parameters of a new inbound call (a CallSid of its own: a repeated one continues)."""
    return PARAMS | {"CallSid": "CA" + secrets.token_hex(16)} | fields


def test_incoming_call_is_greeted_in_the_callers_language(client):
    root = twiml(twilio_post(client, "/voice/incoming", new_call(From="+34612345678")))
    assert root.find("Gather/Say").get("language") == "es-ES"
    assert "Acme" in spoken(root)
    withheld = twiml(twilio_post(client, "/voice/incoming", new_call(From="anonymous")))
    assert withheld.find("Gather/Say").get("language") == "en-US"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"CallSid": ""},
        {"Digits": "x" * 10_000, "CallSid": "CA" + "z" * 32},
        {"Digits": "<Say>hi</Say>", "CallSid": "'; DROP TABLE"},
        {"Digits": "5"},
        {"Digits": "\x00\x01", "CallSid": CALL_SID, "From": "\u202e+1"},
        {"From": "x" * 50_000},
        {"CallStatus": "exploded", "CallSid": CALL_SID, "MessageStatus": "\ud800"[:0]},
        {"CallSid": CALL_SID, "To": "not a number", "DialCallStatus": "\x00"},
    ],
)
@pytest.mark.parametrize("path", WEBHOOKS)
def test_garbage_input_gets_polite_twiml_or_a_quiet_204(client, path, params):
    response = twilio_post(client, path, params)
    assert response.status_code in (200, 204), response.get_data(as_text=True)
    if response.status_code == 200:
        root = twiml(response)
        # Ends the call politely, asks a new call its first question, or (a step of a call
        # we do not know) hands it to an agent as the default flow's on_error says.
        assert root[-1].tag in ("Hangup", "Gather", "Enqueue", "Reject")
        assert "error" not in spoken(root).lower() or "Sorry" in spoken(root)


def test_unknown_verification_on_the_call_is_told_politely(client):
    root = twiml(twilio_post(client, f"/voice/code/{SID}/en-US/reveal", PARAMS))
    assert "no longer available" in spoken(root)
    assert root[-1].tag == "Hangup"


@pytest.mark.parametrize("step", ["", "reveal"])
def test_a_malformed_verification_id_on_the_call_is_told_politely(client, step):
    root = twiml(twilio_post(client, f"/voice/code/VE123/en-US/{step}", PARAMS))
    assert "no longer available" in spoken(root)
    assert root[-1].tag == "Hangup"


@pytest.mark.parametrize("locale", ["xx-YY", "en-us", "..", "%3Cscript%3E"])
def test_a_call_url_with_a_locale_we_do_not_speak_falls_back_to_the_default(client, locale):
    root = twiml(twilio_post(client, f"/voice/code/{SID}/{locale}/", PARAMS))
    assert root.find("Gather/Say").get("language") == "en-US"


def test_the_answer_is_one_static_document_per_locale_with_no_redis(make_app):
    """Redis down: the answer still greets (it never asks Redis); the key press apologises."""
    client = make_app(redis_url="redis://127.0.0.1:1/0").test_client()
    english = twiml(twilio_post(client, f"/voice/code/{SID}/en-US/", PARAMS))
    spanish = twiml(twilio_post(client, f"/voice/code/{SID}/es-ES/", PARAMS))
    assert "press any key" in spoken(english)
    assert spanish.find("Gather/Say").get("language") == "es-ES"


def test_unknown_webhook_paths_are_plain_404(client):
    response = twilio_post(client, "/voice/nothing", PARAMS)
    assert response.status_code == 404
    assert response.mimetype == "text/plain"


@pytest.mark.parametrize("path", ["/voice/incoming", "/voice/missed-call", "/voice/flash-call"])
def test_huge_webhook_bodies_are_413(client, path):
    response = client.post(path, data={"From": "1" * 200_000}, headers={"X-Twilio-Signature": "x"})
    assert response.status_code == 413


def test_when_redis_is_down_callers_hear_an_apology_and_the_api_says_503(make_app):
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    client = app.test_client()
    root = twiml(twilio_post(client, f"/voice/code/{SID}/en-US/reveal", PARAMS))
    assert "Sorry" in spoken(root) and root[-1].tag == "Hangup"
    response = client.post(
        "/v1/verifications",
        json={"to": "+14155550123", "channel": "sms"},
        headers={"Authorization": "Bearer test-api-token-0123456789"},
    )
    assert response.status_code == 503
    assert response.get_json()["type"] == "urn:ivr:problem:store_unavailable"
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["store"]["status"] == "unavailable"


def test_healthz_reports_the_store_and_carrier(client):
    health = client.get("/healthz")
    assert health.status_code == 200
    body = health.get_json()
    assert body["status"] == "ok" and body["carrier"] == "twilio"
    assert body["store"]["status"] == "ok"
    assert body["store"]["maxmemory_policy"] == "noeviction"
    assert "warning" not in body["store"]


def test_incoming_prefers_twilios_from_country_over_parsing_the_caller_id(client):
    params = new_call(From="+14155550123", FromCountry="DE")
    root = twiml(twilio_post(client, "/voice/incoming", params))
    assert root.find("Gather/Say").get("language") == "de-DE"
    garbage = twiml(
        twilio_post(client, "/voice/incoming", new_call(From="+33612345678", FromCountry="1!"))
    )
    assert garbage.find("Gather/Say").get("language") == "fr-FR"


def test_static_twiml_is_rendered_once_per_locale_and_app(make_app):
    answer = f"/voice/code/{SID}/{{}}/"
    english, spanish = (
        twiml(twilio_post(make_app().test_client(), answer.format(locale), PARAMS))
        for locale in ("en-US", "es-ES")
    )
    assert spoken(english) != spoken(spanish)
    renamed = make_app(app_name="Zenith").test_client()
    assert "Zenith" in spoken(twiml(twilio_post(renamed, answer.format("en-US"), PARAMS)))


def test_a_percent_encoded_path_is_checked_as_twilio_signed_it(client):
    """Twilio signs the URL as given; Flask decodes the path. The raw target must be used."""
    url = PUBLIC_BASE_URL + "/voice/code/VE%30" + "0" * 31 + "/en-US/"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, PARAMS)
    response = client.post(
        "/voice/code/VE%30" + "0" * 31 + "/en-US/",
        data=PARAMS,
        base_url=PUBLIC_BASE_URL,
        headers={"X-Twilio-Signature": signature},
        environ_overrides={"REQUEST_URI": "/voice/code/VE%30" + "0" * 31 + "/en-US/"},
    )
    assert response.status_code == 200
