"""Nothing grows without bound: every kind of key the app writes, with its expiry or its cap.

A broad workload (every channel, right and wrong codes, a missed call, an IVR call, events
delivered and failed, the console, a recording uploaded and tried in the simulator, customers,
tokens) runs; then every key in Redis must match one pattern below, and have a time to live
unless the pattern says what bounds it instead."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import CALLER_ID, Api, twilio_post, twiml
from tests.console_helpers import make_user, sign_in
from tests.event_receiver import Answer, Receiver
from tests.test_api import sms_code
from tests.test_recordings import upload, wav_bytes
from tests.test_verification_events import FLASH_POOL, MISSED_CALL_NUMBER, SECRET, deliver

TTL = "expires"
# pattern -> TTL, or what bounds a key that never expires.
LIFETIMES: dict[str, str] = {
    r"ivr:\{v[0-9a-f]{2}\}:pv:[0-9a-f]{12}:[0-9a-f]{8}": TTL,  # code lifetime + retention
    r"ivr:\{v[0-9a-f]{2}\}:ve:VE[0-9a-f]{32}": TTL,  # retention after the end
    r"ivr:\{v[0-9a-f]{2}\}:sends:\d+": TTL,  # two send windows
    r"ivr:\{v[0-9a-f]{2}\}:f:[0-9a-f]{12}": TTL,  # the failure budget's window
    r"ivr:\{v[0-9a-f]{2}\}:call:CA[0-9a-f]{32}": TTL,  # 30 days: replays refused
    r"ivr:\{v[0-9a-f]{2}\}:idem:[0-9a-f]{32}": TTL,  # 24 hours
    r"ivr:\{idem:[0-9a-f]{2}\}:[0-9a-f]{32}": TTL,  # 24 hours
    r"ivr:\{v[0-9a-f]{2}\}:expiries": "one entry per pending verification, off at its end",
    r"ivr:\{v[0-9a-f]{2}\}:in-flight": "one entry per send in flight, off when it settles",
    r"ivr:\{v[0-9a-f]{2}\}:events": "one entry per undelivered event, off when delivered",
    r"ivr:\{(v[0-9a-f]{2}|events)\}:event:EV[0-9a-f]{32}": "until delivered; given up: 7 days",
    r"ivr:\{v[0-9a-f]{2}\}:events-dead": TTL,  # 7 days, 1,000 per shard
    r"ivr:\{events\}:hot": "at most one member per shard (257)",
    r"ivr:\{limit:(prefix|client):[^}]+\}:sends": TTL,  # the window and a tenth
    r"ivr:\{limits\}:sends:console-sign-in-(user|address):.+": TTL,  # the window
    r"ivr:\{missed-calls:\d+\}:outcomes": "16 shards, one field per outcome (a dozen)",
    r"ivr:\{simulator\}:outbox": TTL,  # a day, 200 entries
    r"ivr:\{call:CA[0-9a-f]{32}\}:(flow-state|journey)": TTL,  # CALL_STATE_TTL_SECONDS
    r"ivr:\{calls\}:recent": TTL,  # 1,000 calls
    r"ivr:\{recent\}:verifications": TTL,  # 2,000 verifications
    r"ivr:\{stats:[mh]:\d+\}:verifications": TTL,  # 25 hours, 8 days
    r"ivr:\{sim:CA[0-9a-f]{32}\}:call": TTL,  # a couple of hours
    r"ivr:\{(flows|prompts)\}:(generation|live|latest|file-digests|drafts)": "per document",
    r"ivr:\{(flows|prompts)\}:versions:.+": "200 versions per document",
    r"ivr:\{(flows|prompts)\}:trial:[0-9a-f]+": TTL,  # 4 hours
    r"ivr:\{(flows|prompts)\}:trials": TTL,  # with the newest trial
    r"ivr:\{recording:[0-9a-f]{64}\}:audio": "RECORDINGS_MAX_MB; swept an hour after, unnamed",
    r"ivr:\{recordings\}:(index|sizes|total)": "one entry per stored recording",
    r"ivr:\{recordings\}:sweep": TTL,  # the sweep interval
    r"ivr:\{user:[^}]+\}:user": "one per console user (made by admins)",
    r"ivr:\{user:[^}]+\}:(sessions|session:[0-9a-f]+)": TTL,  # idle and absolute limits
    r"ivr:\{users\}:names": "one per console user",
    r"ivr:\{users\}:lock": TTL,
    r"ivr:\{audit\}:log": "10,000 entries",
    r"ivr:\{customers:\d+\}:(customer:\d+|ids)": "one per customer (the directory)",
    r"ivr:\{customer-phones:\d+\}:phones": "one per customer's phone",
    r"ivr:\{api-tokens:\d+\}:tokens": "one per issued API token",
    r"ivr:\{api-token-names:\d+\}:names": "one per issued API token",
    r"ivr:\{services\}:service:VA[0-9a-f]{32}": "one per Verify Service, at most 1,000",
    r"ivr:\{services\}:index": "one entry per Verify Service, at most 1,000",
}


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


def test_every_key_has_an_expiry_or_a_stated_bound(make_app, receiver, redis_client, twilio_api):
    app = make_app(
        events_webhook_url=receiver.url,
        events_webhook_secret=SECRET,
        missed_call_number=MISSED_CALL_NUMBER,
        flash_call_accept_weak_odds=True,
        flash_call_numbers=",".join(FLASH_POOL),
    )
    client = app.test_client()
    api = Api(client)
    sms = api.start(to="+14155550123", channel="sms").get_json()
    api.check(sms_code(twilio_api), sid=sms["sid"])
    called = api.start(to="+14155550124", channel="call").get_json()
    api.check("000001", sid=called["sid"])
    api.start(to="+14155550125", channel="flash_call")
    waiting = api.start(to="+14155550126", channel="missed_call").get_json()
    call = {"CallSid": "CA" + "7" * 32, "From": "+14155550126", "To": waiting["call_to"]}
    twilio_post(client, "/voice/missed-call", call)
    api.post("/v1/verifications", {"to": "+14155550127", "channel": "sms"})  # left pending
    client.post(
        "/v1/verifications",
        json={"to": "+14155550128", "channel": "sms"},
        headers={**api.headers, "Idempotency-Key": "k-1"},
    )
    receiver.answer(Answer(status=500))
    deliver(app)  # one event fails (retried later), the others are delivered; chores run
    twiml(
        twilio_post(
            client,
            "/voice/incoming",
            {"CallSid": "CA" + "8" * 32, "From": "+14155550129", "To": CALLER_ID},
        )
    )
    api.put("/v1/customers/12345678", {"phone": "+14155550130", "name": "Ada"})
    app.extensions["ivr"].api_tokens.issue("billing")
    service = app.extensions["ivr"].verify_services.create({"FriendlyName": "Acme"})
    app.extensions["ivr"].verifications.start(
        to="+14155550131", channel="sms", service=service
    )  # a Verify Service's verification, its send counted per Service
    make_user(app, "supervisor", "editor")
    supervisor = sign_in(app, "supervisor")
    supervisor.get("/console/")
    upload(supervisor, wav_bytes(), "welcome.wav")  # a recording, counted, in the draft
    published = app.extensions["ivr"].prompts.published
    published.save_trial(json.dumps({"en-US": published.draft("en-US").text}))

    unbounded, met = [], set()
    for key in redis_client.scan_iter(count=1000):
        kind = next((p for p in LIFETIMES if re.fullmatch(p, key)), None)
        assert kind is not None, f"{key}: a key no pattern names (add it, with its lifetime)"
        met.add(kind)
        if LIFETIMES[kind] == TTL and redis_client.pttl(key) < 0:
            unbounded.append(key)
    assert not unbounded, f"keys that should expire but do not: {unbounded}"
    recordings = {p for p in LIFETIMES if "recording" in p or p.endswith(":trials")}
    assert recordings <= met, f"the scenario wrote none of {sorted(recordings - met)}"
