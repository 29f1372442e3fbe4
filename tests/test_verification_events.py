"""The events webhook, end to end: verifications end through the API and through signed Twilio
webhooks, and the app's endpoint (a real local HTTP server) receives signed events it can
verify with any Standard Webhooks library."""

from __future__ import annotations

import base64
import json
import time

import pytest
from flask import Flask
from standardwebhooks.webhooks import Webhook

from ivr import keys
from ivr.app import start_background_work
from ivr.events import SHARDS
from ivr.verification.models import bucket_of
from tests.conftest import Api, twilio_post, twiml, verification_key
from tests.event_receiver import Answer, Receiver

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
MISSED_CALL_NUMBER = "+14155550111"
FLASH_POOL = ("+14155550121", "+14155550132")
USER = "+14155550123"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def app(make_app, receiver):
    return make_app(
        events_webhook_url=receiver.url,
        events_webhook_secret=SECRET,
        missed_call_number=MISSED_CALL_NUMBER,
        flash_call_accept_weak_odds=True,  # a test pool: a few numbers
        flash_call_numbers=",".join(FLASH_POOL),
    )


def deliver(app) -> int:
    """One round of the events thread: the expiry sweep, then deliveries."""
    dispatcher = app.extensions["ivr"].events
    for chore in dispatcher.chores:
        chore()
    return dispatcher.deliver_due()


def due_now(app, sid: str) -> None:
    """Make the events of `sid`'s bucket due now, rather than sleep through a backoff."""
    client, shard = app.extensions["ivr"].redis, f"v{bucket_of(sid)}"
    for event_id in client.zrange(keys.events_due(shard), 0, -1):
        client.zadd(keys.events_due(shard), {event_id: 0})
    app.extensions["ivr"].events.outbox.nudge(shard)


def received(receiver: Receiver) -> list[dict]:
    """Every event the app got, each checked as the app would: signature and timestamp."""
    events = []
    for request in receiver.requests:
        payload = Webhook(SECRET).verify(request.body, request.headers)
        assert request.headers["webhook-id"] == payload["id"]
        events.append(payload)
    return events


def test_a_missed_call_approval_is_announced_signed(app, api, client, receiver):
    verification = api.start(to=USER, channel="missed_call").get_json()
    params = {"CallSid": "CA" + "1" * 32, "From": USER, "To": verification["call_to"]}
    twiml(
        twilio_post(
            client, "/voice/missed-call", params | {"StirVerstat": "TN-Validation-Passed-A"}
        )
    )
    assert deliver(app) == 1
    [event] = received(receiver)
    assert event["type"] == "verification.approved"
    assert event["data"]["sid"] == verification["sid"]
    assert event["data"]["caller_id_attestation"] == "A"
    assert event["data"]["status"] == "approved" and event["data"]["valid"] is True


def test_a_flash_call_checked_right_is_announced(app, api, twilio_api, receiver):
    verification = api.start(to=USER, channel="flash_call").get_json()
    code = twilio_api.calls()[-1].value("From")[-4:]
    assert api.check(code, sid=verification["sid"]).get_json()["valid"] is True
    deliver(app)
    assert [e["type"] for e in received(receiver)] == ["verification.approved"]


def test_every_way_a_verification_ends_is_announced_once(app, api, twilio_api, receiver):
    canceled = api.start(to="+14155550124", channel="sms").get_json()
    api.post(f"/v1/verifications/{canceled['sid']}/cancel")
    api.post(f"/v1/verifications/{canceled['sid']}/cancel")  # 409: nothing new to say
    worn_out = api.start(to="+14155550125", channel="sms").get_json()
    for _ in range(5):
        api.check("000000", sid=worn_out["sid"])
    api.check("000000", sid=worn_out["sid"])  # 409 on a finished one: no second event
    twilio_api.fail_next(status=400, body={"code": 21211, "message": "Invalid 'To' number"})
    failed = api.start(to="+14155550126", channel="sms").get_json()
    deliver(app)
    announced = {(e["data"]["sid"], e["type"]) for e in received(receiver)}
    assert announced == {
        (canceled["sid"], "verification.canceled"),
        (worn_out["sid"], "verification.max_attempts_reached"),
        (failed["sid"], "verification.failed"),
    }
    assert len(receiver.requests) == 3


def expire_now(redis_client, sid: str) -> None:
    """Move a verification's expiry into the past (the shortest window is 30 s)."""
    past = int(redis_client.time()[0]) * 1000 - 1000
    redis_client.hset(verification_key(redis_client, sid), "x", str(past))


def test_found_expired_by_a_check_or_a_late_call_is_announced_once(
    app, api, client, receiver, redis_client, twilio_api
):
    checked = api.start(to="+14155550127", channel="sms").get_json()
    expire_now(redis_client, checked["sid"])
    assert api.check("123456", sid=checked["sid"]).status_code == 409
    assert api.check("123456", sid=checked["sid"]).status_code == 409
    late = api.start(to=USER, channel="missed_call").get_json()
    expire_now(redis_client, late["sid"])
    params = {"CallSid": "CA" + "7" * 32, "From": USER, "To": late["call_to"]}
    twiml(twilio_post(client, "/voice/missed-call", params))
    deliver(app)
    deliver(app)  # the sweep finds both already ended: nothing more
    announced = sorted((e["data"]["sid"], e["type"]) for e in received(receiver))
    assert announced == sorted(
        [(checked["sid"], "verification.expired"), (late["sid"], "verification.expired")]
    )


def test_a_verification_nobody_checks_is_announced_expired(app, api, receiver, redis_client):
    verification = api.start(to=USER, channel="missed_call").get_json()
    sid = verification["sid"]
    # Its window runs out: in the verification and on the sweep's list alike.
    expire_now(redis_client, sid)
    redis_client.zadd(keys.expiries(bucket_of(sid)), {sid: 0})
    deliver(app)
    [event] = received(receiver)
    assert event["type"] == "verification.expired" and event["data"]["status"] == "expired"
    assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "expired"
    deliver(app)
    assert len(receiver.requests) == 1, "swept once"


def test_an_app_that_is_down_gets_the_event_later(app, api, client, receiver):
    receiver.answer(Answer(status=503), Answer(status=500))
    verification = api.start(to=USER, channel="missed_call").get_json()
    params = {"CallSid": "CA" + "2" * 32, "From": USER, "To": verification["call_to"]}
    twilio_post(client, "/voice/missed-call", params)
    outbox = app.extensions["ivr"].events.outbox
    assert deliver(app) == 0
    assert outbox.pending_count() == 1, "kept, due again after a backoff"
    # Make it due now rather than sleep through the backoff.
    due_now(app, verification["sid"])
    deliver(app)
    due_now(app, verification["sid"])
    assert deliver(app) == 1
    bodies = {request.body for request in receiver.requests}
    assert len(receiver.requests) == 3 and len(bodies) == 1, "the same event, three tries"
    assert received(receiver)[-1]["type"] == "verification.approved"


def test_a_replayed_event_is_recognisable_and_an_old_one_refused(app, api, client, receiver):
    """What the app does with the signature: reject tampering and stale timestamps."""
    verification = api.start(to=USER, channel="missed_call").get_json()
    params = {"CallSid": "CA" + "3" * 32, "From": USER, "To": verification["call_to"]}
    twilio_post(client, "/voice/missed-call", params)
    deliver(app)
    [request] = receiver.requests
    webhook = Webhook(SECRET)
    with pytest.raises(Exception, match="signature"):
        webhook.verify(request.body.replace(b"approved", b"canceled"), request.headers)
    stale = request.headers | {"webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(Exception, match="too old"):
        webhook.verify(request.body, stale)


def test_the_events_thread_runs_in_the_background(app, api, client, receiver):
    thread, stop = start_background_work(app)
    try:
        verification = api.start(to=USER, channel="missed_call").get_json()
        params = {"CallSid": "CA" + "4" * 32, "From": USER, "To": verification["call_to"]}
        twilio_post(client, "/voice/missed-call", params)
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert json.loads(receiver.requests[0].body)["type"] == "verification.approved"


def test_without_an_events_url_nothing_is_queued(make_app, redis_client):
    app = make_app(missed_call_number=MISSED_CALL_NUMBER)
    assert app.extensions["ivr"].events is None
    thread, stop = start_background_work(app)  # housekeeping only: no events thread
    assert thread.name == "ivr-chores"
    stop.set()
    thread.join(10)
    assert start_background_work(Flask("bench_baseline")) is None, "another Flask app: no-op"
    assert start_background_work(lambda _environ, _start_response: []) is None
    api = Api(app.test_client())
    api.start(to=USER, channel="missed_call")
    assert not any(redis_client.zcard(keys.expiries(bucket)) for bucket in keys.BUCKETS)
    assert not any(redis_client.zcard(keys.events_due(shard)) for shard in SHARDS)


def test_an_event_names_the_verify_service(app, api, receiver):
    """The events webhook says which Verify Service a verification belonged to: /v1's the
    default Service, a /v2 Service's its own."""
    ivr = app.extensions["ivr"]
    acme = ivr.verify_services.create({"FriendlyName": "Acme"})
    theirs = ivr.verifications.start(to="+14155550126", channel="sms", service=acme)
    ivr.verifications.cancel(theirs.sid, acme)
    ours = api.start(to="+14155550127", channel="sms").get_json()
    api.post(f"/v1/verifications/{ours['sid']}/cancel")
    deliver(app)
    named = {event["data"]["sid"]: event["data"]["service_sid"] for event in received(receiver)}
    assert named == {theirs.sid: acme.sid, ours["sid"]: ivr.verify_services.default_sid}
