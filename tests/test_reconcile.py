"""Sends a worker left "requested" (it died between asking Twilio and recording the answer)
are failed after a deadline, so no verification stays pending with nothing sent."""

from __future__ import annotations

from ivr import keys
from ivr.config import Rate
from ivr.verification.models import bucket_of
from tests.conftest import Api

TO = "+14155550123"


def started_but_never_sent(app, channel: str = "sms"):
    """What a worker that died right after the start script leaves: an attempt 'requested'."""
    ivr = app.extensions["ivr"]
    sid = ivr.code_secrets.new_sid(TO)
    return ivr.verifications.store.start_or_resend(
        new_sid=sid,
        to=TO,
        channel=channel,
        locale="en-US",
        digest=ivr.code_secrets.digest("123456"),
        sealed=ivr.code_secrets.seal(sid, "123456"),
        ttl_ms=600_000,
        retention_ms=60_000,
        send_limit=Rate(100, 600),
    )


def test_a_send_never_settled_is_failed_after_the_deadline_and_ends_its_verification(
    make_app, redis_client
):
    app = make_app()
    service = app.extensions["ivr"].verifications
    started = started_but_never_sent(app)
    sid = started.verification.sid
    in_flight = keys.sends_in_flight(bucket_of(sid))
    assert redis_client.zscore(in_flight, f"{sid}:0") is not None
    assert service.reconcile_sends() == 0, "not past its deadline yet"
    service.send_deadline_ms = 0  # as if the deadline had passed
    service._reconciled_at = float("-inf")
    assert service.reconcile_sends() == 1
    verification = Api(app.test_client()).get(f"/v1/verifications/{sid}").get_json()
    assert verification["status"] == "failed"
    assert verification["send_attempts"][0]["status"] == "failed"
    assert "no answer from the carrier" in verification["send_attempts"][0]["error"]
    assert redis_client.zcard(in_flight) == 0


def test_a_send_the_carrier_answered_is_never_reconciled(make_app, twilio_api, redis_client):
    app = make_app()
    service = app.extensions["ivr"].verifications
    sid = Api(app.test_client()).start(to=TO, channel="sms").get_json()["sid"]
    assert redis_client.zcard(keys.sends_in_flight(bucket_of(sid))) == 0, "settled: gone"
    service.send_deadline_ms = 0
    assert service.reconcile_sends() == 0
    assert service.get(sid).status == "pending"


def test_a_late_answer_beats_the_reconciliation(make_app, redis_client):
    """The carrier's answer settles the attempt first: the reconciliation changes nothing."""
    app = make_app()
    service = app.extensions["ivr"].verifications
    started = started_but_never_sent(app)
    sid = started.verification.sid
    # The answer lands, but (a worker dying at the wrong moment) the in-flight entry stays.
    service.store.settle(sid, 0, status="queued", provider_sid="SM" + "1" * 32)
    redis_client.zadd(keys.sends_in_flight(bucket_of(sid)), {f"{sid}:0": 0})
    service.send_deadline_ms = 0
    service.reconcile_sends()
    assert service.get(sid).status == "pending"
    assert service.get(sid).send_attempts[0].status == "queued"


def test_a_resend_that_got_through_keeps_the_verification_pending(make_app, twilio_api):
    app = make_app()
    service = app.extensions["ivr"].verifications
    started = started_but_never_sent(app)
    sid = started.verification.sid
    Api(app.test_client()).start(to=TO, channel="sms")  # a re-send, delivered
    service.send_deadline_ms = 0
    assert service.reconcile_sends() == 1
    verification = service.get(sid)
    assert verification.status == "pending", "one send got through: it may still be checked"
    assert verification.send_attempts[0].status == "failed"
