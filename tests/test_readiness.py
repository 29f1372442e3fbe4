"""/readyz: 200 only when Redis answers, flows and prompts are loaded and (with an events
webhook) the outbox is moving; otherwise 503 naming what failed. /healthz stays liveness."""

from __future__ import annotations

import time

from ivr.events import EventDispatcher, EventOutbox
from ivr.web.public import OUTBOX_STUCK_AFTER_SECONDS
from tests.event_receiver import Answer, Receiver

EVENTS_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_serving_app_is_ready_and_says_what_it_checked(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ready" and body["failed"] == []
    assert set(body["checks"]) == {"redis", "flows", "prompts"}, "no outbox without a webhook"
    assert body["checks"]["flows"] == {"status": "ok", "flows": 1}
    assert body["checks"]["prompts"]["status"] == "ok"


def test_without_redis_it_is_not_ready_and_says_redis(make_app):
    client = make_app(redis_url="redis://127.0.0.1:1/0").test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["redis"], "the flow files still serve while Redis is away"
    assert "ConnectionError" in body["checks"]["redis"]["detail"]


def test_with_no_flow_to_serve_it_is_not_ready(make_app, tmp_path):
    empty = tmp_path / "no-flows"
    empty.mkdir()
    answer = make_app(flows_dir=str(empty)).test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["failed"] == ["flows"]
    assert "no flow is served" in answer.get_json()["checks"]["flows"]["detail"]


def test_an_outbox_whose_first_event_waits_too_long_is_stuck_until_it_moves(make_app, redis_client):
    app = make_app(
        events_webhook_url="https://app.example.test/hooks", events_webhook_secret=EVENTS_SECRET
    )
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["events"] == {
        "status": "ok",
        "pending": 0,
        "dead": 0,
    }
    # An event published long enough ago that no events thread can have been running.
    overdue_ms = (OUTBOX_STUCK_AFTER_SECONDS + 60) * 1000
    published_at = int(time.time() * 1000) - overdue_ms
    EventOutbox(redis_client, clock_ms=lambda: published_at).publish("verification.approved", {})
    stuck = client.get("/readyz")
    assert stuck.status_code == 503
    body = stuck.get_json()
    assert body["failed"] == ["events"]
    assert body["checks"]["events"]["pending"] == 1
    assert "no events thread is delivering" in body["checks"]["events"]["detail"]

    receiver = Receiver()
    try:
        dispatcher = EventDispatcher(
            EventOutbox(redis_client), url=receiver.url, secret=EVENTS_SECRET
        )
        assert dispatcher.deliver_due() == 1
    finally:
        receiver.stop()
    assert client.get("/readyz").status_code == 200


def test_an_event_waiting_for_its_retry_is_not_stuck(make_app, redis_client):
    """A failing app pushes each retry into the future: the outbox is moving."""
    app = make_app(
        events_webhook_url="https://app.example.test/hooks", events_webhook_secret=EVENTS_SECRET
    )
    outbox = EventOutbox(redis_client)
    receiver = Receiver()
    try:
        receiver.answer(Answer(503))
        outbox.publish("verification.approved", {})
        dispatcher = EventDispatcher(outbox, url=receiver.url, secret=EVENTS_SECRET)
        assert dispatcher.deliver_due() == 0
    finally:
        receiver.stop()
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["events"]["pending"] == 1


def test_healthz_stays_liveness(client):
    assert client.get("/healthz").status_code == 200
