"""Logs: text by default, one JSON object per line with LOG_FORMAT=json, each record with the
request's id, route, CallSid or verification sid and outcome; numbers masked; no code and no
token, ever (a realistic run's logs are searched for every code it generated)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr import logs
from ivr.simulator import PhoneSimulator
from tests.conftest import (
    API_TOKEN,
    AUTH_TOKEN,
    CALLER_ID,
    PUBLIC_BASE_URL,
    SECRET_KEY,
    Api,
    twilio_post,
)

REPO = Path(__file__).resolve().parent.parent
METRICS_TOKEN = "metrics-token-0123456789abcdef"
SPOKEN_CODE = re.compile(r"(?:\d ){5}\d")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the app logs while the test runs, through the handler LOG_FORMAT=json installs."""
    stream = io.StringIO()
    handler = logs.handler(stream, "json")
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict]:
    """Every line is one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- the fields ----------------------------------------------------------------------------------


def test_each_record_of_a_request_carries_its_id_route_and_verification(make_app, json_log):
    client = make_app(log_level="DEBUG").test_client()
    api = Api(client)
    incoming = "3b1f0c1e-8a2d-4c5e-9f10-1234567890ab"
    started = client.post(
        "/v1/verifications",
        json={"to": "+14155550132", "channel": "sms"},
        headers={**api.headers, "X-Request-Id": incoming},
    )
    assert started.status_code == 201
    assert started.headers["X-Request-Id"] == incoming
    sid = started.get_json()["sid"]
    found = [r for r in records(json_log) if r.get("request_id") == incoming]
    assert {r["logger"] for r in found} >= {"ivr.verification.service", "ivr.request"}
    assert all(r["route"] == "/v1/verifications" and r["method"] == "POST" for r in found)
    summary = next(r for r in found if r["logger"] == "ivr.request")
    assert summary["status"] == 201
    assert summary["outcome"] == "created"
    assert summary["verification_sid"] == sid
    assert summary["level"] == "DEBUG", "in text the summary is gunicorn's access line's twin"
    assert {"time", "level", "logger", "message"} <= summary.keys()


def test_a_malformed_request_id_is_replaced_by_a_new_one(client, json_log):
    for sent in ("short", "has spaces in it, too many", "x" * 200):
        answered = client.get("/healthz", headers={"X-Request-Id": sent}).headers["X-Request-Id"]
        assert answered != sent
        assert re.fullmatch(r"[0-9a-f]{32}", answered)
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["X-Request-Id"])


def test_webhook_records_carry_the_callsid_once_twilio_sent_it(make_app, json_log):
    call_sid = "CA" + "4" * 32
    answer = twilio_post(
        make_app(log_format="json").test_client(),
        "/voice/incoming",
        {"CallSid": call_sid, "From": "+14155550133", "To": CALLER_ID},
    )
    assert answer.status_code == 200
    summary = next(r for r in records(json_log) if r["logger"] == "ivr.request")
    assert summary["call_sid"] == call_sid
    assert summary["route"] == "/voice/incoming"


def test_a_json_app_logs_its_request_summary_at_info(make_app, json_log):
    client = make_app(log_format="json").test_client()
    client.get("/healthz")
    summary = next(r for r in records(json_log) if r["logger"] == "ivr.request")
    assert (summary["level"], summary["message"]) == ("INFO", "GET /healthz 200")


def test_the_default_is_readable_text_and_json_is_one_object_per_line(tmp_path, redis_url):
    settings = {"INSTANCE_PATH": str(tmp_path), "REDIS_URL": redis_url}
    program = (
        "import logging; from ivr import create_app; "
        f"create_app({settings!r}); "
        "logging.getLogger('ivr.test').warning('said once')"
    )
    for log_format, expect_json in (("", False), ("json", True)):
        env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": log_format}
        said = subprocess.run(  # noqa: S603
            [sys.executable, "-c", program],
            cwd=REPO,
            env={k: v for k, v in env.items() if v},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stderr.splitlines()
        line = next(line for line in said if "said once" in line)
        if expect_json:
            assert all(json.loads(each) for each in said)
            assert json.loads(line)["logger"] == "ivr.test"
        else:
            assert re.fullmatch(r"\S+ \S+ WARNING ivr\.test: said once", line), line


# -- what never appears --------------------------------------------------------------------------


class Run:
    """A realistic run: verifications by call and SMS (Twilio's stand-in and the simulated
    carrier), checks right and wrong, an IVR call with keypad authentication; every code the
    phones received, and every token used."""

    def __init__(self) -> None:
        self.codes: set[str] = set()
        self.numbers: set[str] = set()
        self.tokens: set[str] = {API_TOKEN, AUTH_TOKEN, SECRET_KEY, METRICS_TOKEN}

    def received(self, code: str) -> str:
        assert re.fullmatch(r"\d{6}", code), code
        self.codes.add(code)
        return code

    def number(self, value: str) -> str:
        self.numbers.add(value)
        return value


def _wrong(code: str) -> str:
    return "1" * 6 if code != "1" * 6 else "2" * 6


def _twilio_run(run: Run, app, twilio_api) -> None:
    client = app.test_client()
    issued = app.extensions["ivr"].api_tokens.issue("crm")
    run.tokens.add(issued)
    api, crm = Api(client), Api(client, issued)
    phone = PhoneSimulator(app, AUTH_TOKEN)

    # By voice call: the phone answers, presses a key, hears the code.
    to = run.number("+14155550134")
    verification = api.start(to=to, channel="call").get_json()
    placed = twilio_api.calls()[-1]
    heard = phone.call(
        placed.value("Url"),
        from_=placed.value("From"),
        to=to,
        keys=["5"],
        call_sid=twilio_api.last_sid,
        direction="outbound-api",
        status_callback=placed.value("StatusCallback"),
    )
    code = run.received(SPOKEN_CODE.search(" ".join(heard.spoken)).group(0).replace(" ", ""))
    assert api.check(_wrong(code), sid=verification["sid"]).get_json()["valid"] is False
    assert api.check(code, to=to).get_json()["valid"] is True

    # By SMS, with an issued token; the message is delivered (status callback).
    to = run.number("+14155550135")
    sid = crm.start(to=to, channel="sms").get_json()["sid"]
    sms = twilio_api.messages()[-1]
    twilio_post(
        client,
        f"/sms/status/{sid}",
        {"MessageSid": twilio_api.last_sid, "MessageStatus": "delivered"},
    )
    code = run.received(re.search(r"\d{6}", sms.value("Body")).group(0))
    assert crm.check(_wrong(code), to=to).get_json()["valid"] is False
    assert crm.check(code, sid=sid).get_json()["valid"] is True

    # The IVR: the caller is identified by caller ID, gets an SMS, types a wrong code, then
    # the right one, and reaches an agent verified.
    on_file = run.number("+14155550136")
    api.put("/v1/customers/31415926", json={"phone": on_file, "name": "Ada", "sms": True})
    keys = ["1", "1", "000000#", "code"]

    def press(_transcript: object) -> str | None:
        pressed = keys.pop(0) if keys else None
        if pressed == "code":
            body = twilio_api.messages()[-1].value("Body")
            return run.received(re.search(r"\d{6}", body).group(0)) + "#"
        return pressed

    call = phone.call(f"{PUBLIC_BASE_URL}/voice/incoming", from_=on_file, to=CALLER_ID, keys=press)
    assert call.ended_by == "enqueue"
    assert "are verified" in " ".join(call.spoken)
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200


def _simulated_run(run: Run, app) -> None:
    ivr = app.extensions["ivr"]
    run.tokens |= {ivr.secrets.api_token, ivr.secrets.webhook_auth_token}
    run.tokens.add(ivr.secrets.secret_key.decode())
    api = Api(app.test_client(), ivr.secrets.api_token)

    to = run.number("+14155550137")
    verification = api.start(to=to, channel="call").get_json()
    [placed] = [i for i in api.get("/v1/simulator/outbox").get_json()["items"] if i["to"] == to]
    heard = api.post(f"/v1/simulator/calls/{placed['sid']}/answer", {"keys": ["5"]}).get_json()
    said = " ".join(event["text"] for event in heard["events"])
    code = run.received(SPOKEN_CODE.search(said).group(0).replace(" ", ""))
    assert api.check(_wrong(code), to=to).get_json()["valid"] is False
    assert api.check(code, sid=verification["sid"]).get_json()["valid"] is True

    to = run.number("+14155550138")
    api.start(to=to, channel="sms")
    [sms] = [i for i in api.get("/v1/simulator/outbox").get_json()["items"] if i["to"] == to]
    code = run.received(re.search(r"\d{6}", sms["body"]).group(0))
    assert api.check(code, to=to).get_json()["valid"] is True

    # The simulated handset rings the IVR and presses keys (no code asked: a stranger).
    caller = run.number("+14155550139")
    rang = api.post("/v1/simulator/calls", {"from": caller, "to": CALLER_ID, "keys": ["1", "3"]})
    assert rang.status_code == 200


def test_a_realistic_run_logs_no_code_no_token_and_no_whole_number(make_app, twilio_api, json_log):
    text_stream = io.StringIO()
    text_handler = logs.handler(text_stream, "text")
    logging.getLogger().addHandler(text_handler)
    run = Run()
    try:
        twilio_app = make_app(log_level="DEBUG", log_format="json", metrics_token=METRICS_TOKEN)
        _twilio_run(run, twilio_app, twilio_api)
        simulated = make_app(
            log_level="DEBUG",
            twilio_account_sid=None,
            twilio_auth_token=None,
            twilio_caller_id=None,
            twilio_api_base_url=None,
        )
        _simulated_run(run, simulated)
    finally:
        logging.getLogger().removeHandler(text_handler)

    found = records(json_log)
    assert len(run.codes) == 5, run.codes  # call, SMS, the IVR's, simulated call and SMS
    assert any(r.get("call_sid") for r in found), "webhooks' records carry the CallSid"
    assert any(r.get("outcome") == "approved" for r in found)
    # Every field but the time (its microseconds are six digits too), as one text.
    logged = "\n".join(
        json.dumps({k: v for k, v in record.items() if k != "time"}) for record in found
    )
    logged += "\n" + re.sub(r"^\S+ \S+ ", "", text_stream.getvalue(), flags=re.MULTILINE)
    for code in run.codes:
        assert not re.search(rf"(?<!\d){code}(?!\d)", logged), f"code {code} was logged"
        assert " ".join(code) not in logged, f"code {code} was logged as spoken"
    for token in run.tokens:
        assert token not in logged, "a token was logged"
    for number in run.numbers:
        assert number not in logged, f"{number} was logged unmasked"
        assert number[:-4] + "****" in logged, "numbers are logged masked"
    assert "?s=" not in logged, "query strings (sealed call state) are never logged"
