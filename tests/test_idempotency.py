"""Idempotency-Key on POST /v1/verifications and /v1/verifications/check: a client that timed
out sends the request again with the same key and learns what the first one did, which acted
only once, and the 503 of a lost answer says only what is known."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import API_TOKEN, Api
from tests.stall_proxy import SlowRedisProxy
from tests.test_api import assert_problem, sms_code

TO = "+14155550123"


def keyed(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": key}


def test_a_start_sent_again_with_its_key_is_answered_as_the_first_and_sends_nothing(
    client, twilio_api
):
    key = str(uuid.uuid4())
    first = client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    again = client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json(), "the first answer, as it was"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert len(twilio_api.messages()) == 1, "one SMS: the retry sent nothing"
    # Without the key, the same request is a re-send, as always.
    resent = Api(client).start(to=TO, channel="sms").get_json()
    assert len(resent["send_attempts"]) == 2


def test_a_check_sent_again_with_its_key_is_not_counted_twice(client, twilio_api):
    api = Api(client)
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    wrong = "000000" if sms_code(twilio_api) != "000000" else "111111"
    key = str(uuid.uuid4())
    body = {"sid": sid, "code": wrong}
    first = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    again = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    assert (
        first.get_json()
        == again.get_json()
        == {
            "sid": sid,
            "to": TO,
            "status": "pending",
            "valid": False,
        }
    )
    assert api.get(f"/v1/verifications/{sid}").get_json()["check_attempts"] == 1


def test_an_error_answer_is_kept_too(client, twilio_api):
    api = Api(client)
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    assert api.post(f"/v1/verifications/{sid}/cancel").status_code == 200
    key = str(uuid.uuid4())
    body = {"sid": sid, "code": "123456"}
    first = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    assert_problem(first, 409, "not_pending")
    again = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    assert again.get_data() == first.get_data() and again.status_code == 409
    assert again.mimetype == "application/problem+json"


def test_a_key_sent_with_other_parameters_is_refused(client, twilio_api):
    key = str(uuid.uuid4())
    client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    other_number = client.post(
        "/v1/verifications", json={"to": "+14155550124", "channel": "sms"}, headers=keyed(key)
    )
    assert_problem(other_number, 422, "idempotency_key_reused")
    other_channel = client.post(
        "/v1/verifications", json={"to": TO, "channel": "call"}, headers=keyed(key)
    )
    assert_problem(other_channel, 422, "idempotency_key_reused")
    assert len(twilio_api.messages()) == 1 and not twilio_api.calls()


def test_keys_belong_to_their_client_and_their_operation(make_app, twilio_api):
    app = make_app()
    other_token = app.extensions["ivr"].api_tokens.issue("other-client")
    client = app.test_client()
    key = "order-4711"
    mine = client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    theirs = client.post(
        "/v1/verifications",
        json={"to": "+14155550124", "channel": "sms"},
        headers={"Authorization": f"Bearer {other_token}", "Idempotency-Key": key},
    )
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.get_json()["sid"] != theirs.get_json()["sid"]
    checked = client.post(
        "/v1/verifications/check", json={"to": TO, "code": "123456"}, headers=keyed(key)
    )
    assert checked.status_code == 200, "a check's keys are not a start's"


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 256])
def test_a_malformed_key_is_a_400(client, key):
    response = client.post(
        "/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key)
    )
    assert_problem(response, 400, "invalid_idempotency_key")


@pytest.fixture
def stalled(make_app, redis_url):
    """An app whose Redis answers go through a proxy that can lose one script's answer."""
    if redis_url.startswith("redis+cluster://"):
        pytest.skip(
            "the proxy stands in front of one server; the cluster's failover is tested apart"
        )
    proxy = SlowRedisProxy(redis_url)
    yield make_app(redis_url=proxy.url()), proxy
    proxy.close()


def test_a_check_whose_answer_was_lost_is_503_unknown_and_the_retry_learns_it_approved(
    stalled, twilio_api
):
    app, proxy = stalled
    api = Api(app.test_client())
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    key = str(uuid.uuid4())
    body = {"sid": sid, "code": code}
    client = app.test_client()
    proxy.delay_reply_to(b":pv:", 2.5)  # the check itself, past the client's 2 s timeout
    lost = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    problem = assert_problem(lost, 503, "store_unavailable")
    assert "outcome is unknown" in problem["detail"], problem
    assert lost.headers.get("Retry-After"), dict(lost.headers)
    assert proxy.delayed.is_set(), "Redis ran the check; only its answer came too late"
    again = client.post("/v1/verifications/check", json=body, headers=keyed(key))
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json() == {"sid": sid, "to": TO, "status": "approved", "valid": True}
    assert again.headers["Idempotent-Replayed"] == "true"
    # Without the key the code is spent, as it must be: it approved once.
    assert_problem(api.check(code, sid=sid), 409, "not_pending")


def test_a_start_whose_answer_was_lost_is_not_started_twice(stalled, twilio_api):
    app, proxy = stalled
    client = app.test_client()
    key = str(uuid.uuid4())
    proxy.delay_reply_to(b":pv:", 2.5)  # the start itself
    lost = client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    assert_problem(lost, 503, "store_unavailable")
    again = client.post("/v1/verifications", json={"to": TO, "channel": "sms"}, headers=keyed(key))
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    started = again.get_json()
    assert started["status"] == "pending" and len(started["send_attempts"]) == 1


def test_a_write_no_replica_acknowledged_is_a_503_with_the_outcome_unknown(make_app, redis_url):
    """REDIS_WAIT_REPLICAS=1 on a server with none: WAIT times out, so an answer would promise
    what a failover could lose; it is a 503 (the write happened on the master, and may stay)."""
    if redis_url.startswith("redis+cluster://"):
        pytest.skip("the test's cluster has a replica per master")
    app = make_app(redis_wait_replicas=1, redis_wait_timeout_ms=50)
    lost = Api(app.test_client()).start(to=TO, channel="sms")
    problem = assert_problem(lost, 503, "store_unavailable")
    assert "outcome is unknown" in problem["detail"] and lost.headers["Retry-After"]
