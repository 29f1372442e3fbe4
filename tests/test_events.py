"""The events outbox and its dispatcher, against a real Redis and a real local HTTP server playing
the app's webhook endpoint. Time is driven by an injected clock: backoff is never slept through."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ivr import keys
from ivr.events import EVENT_TYPES, EventDispatcher, EventOutbox
from tests.conftest import plain_client
from tests.event_receiver import Answer, Receiver

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
T0 = 1_795_323_600_000  # 2026-11-22T05:00:00Z
DATA = {"sid": "VE" + "0" * 32, "to": "+14155550123", "status": "approved"}


class Clock:
    """Milliseconds that move only when the test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(redis_client: redis.Redis, clock: Clock) -> EventOutbox:
    return EventOutbox(redis_client, clock_ms=clock)


@pytest.fixture
def make_dispatcher(
    outbox: EventOutbox, receiver: Receiver
) -> Iterator[Callable[..., EventDispatcher]]:
    """Dispatchers on the shared outbox (and clock) posting to the receiver; kwargs override."""
    sessions: list[requests.Session] = []

    def build(**overrides: Any) -> EventDispatcher:
        target = overrides.pop("outbox", outbox)
        session = overrides.pop("session", None) or requests.Session()
        sessions.append(session)
        options: dict[str, Any] = {
            "url": receiver.url,
            "secret": SECRET,
            "timeout": 1.0,
            "max_attempts": 10,
            "base_delay_ms": 1000,
            "max_delay_ms": 8000,
            "lease_ms": 60_000,
            "session": session,
        }
        options.update(overrides)
        return EventDispatcher(target, **options)

    yield build
    for session in sessions:
        session.close()


def due_score(client: redis.Redis, event_id: str) -> int | None:
    score = client.zscore(keys.events_due("events"), event_id)
    return None if score is None else int(score)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_published_event_is_posted_signed_with_the_stored_body(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    stored = redis_client.hgetall(keys.event("events", event_id))

    assert make_dispatcher().deliver_due() == 1

    assert len(event_id) == 34
    assert event_id.startswith("EV")
    int(event_id[2:], 16)
    assert stored["type"] == "verification.approved"
    assert stored["attempts"] == "0"
    assert stored["created_at"] == str(T0)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/ivr"
    assert request.body == stored["body"].encode()
    assert json.loads(request.body) == {
        "id": event_id,
        "type": "verification.approved",
        "created_at": "2026-11-22T05:00:00Z",
        "data": DATA,
    }
    assert b": " not in request.body  # compact separators
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "ivr-events/1"
    assert request.headers["webhook-id"] == event_id
    assert Webhook(SECRET).verify(request.body, request.headers)["id"] == event_id
    assert outbox.pending_count() == 0
    assert not redis_client.exists(keys.event("events", event_id))


def test_signature_fails_for_a_tampered_body_or_a_wrong_secret(
    outbox: EventOutbox, make_dispatcher: Callable[..., EventDispatcher], receiver: Receiver
) -> None:
    outbox.publish("verification.canceled", DATA)
    make_dispatcher().deliver_due()
    [request] = receiver.requests
    tampered = request.body.replace(b"canceled", b"approved")

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body, {**request.headers, "webhook-id": "EV" + "f" * 32})


def test_signature_timestamp_is_the_time_of_the_attempt_not_of_the_event(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    clock: Clock,
) -> None:
    clock.now = int(time.time() * 1000) - 3_600_000  # published an hour ago
    outbox.publish("verification.expired", DATA)
    receiver.answer(Answer(500))
    dispatcher = make_dispatcher()
    dispatcher.deliver_due()
    clock.advance(3_600_000)
    dispatcher.deliver_due()

    first, retry = receiver.requests
    for request in (first, retry):
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    # An hour-old timestamp would be refused as a replay (5 minutes' tolerance): this is not.
    assert Webhook(SECRET).verify(retry.body, retry.headers)["type"] == "verification.expired"
    assert retry.body == first.body


def test_failed_deliveries_back_off_exponentially_up_to_the_cap_then_succeed(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    receiver.answer(*[Answer(500)] * 6)
    dispatcher = make_dispatcher(base_delay_ms=1000, max_delay_ms=8000)

    delays = []
    for attempt in range(1, 7):
        assert dispatcher.deliver_due() == 0
        delay = due_score(redis_client, event_id) - clock.now
        ceiling = min(8000, 1000 * 2 ** (attempt - 1))
        assert ceiling // 2 <= delay <= ceiling  # equal jitter
        assert redis_client.hget(keys.event("events", event_id), "attempts") == str(attempt)
        assert dispatcher.deliver_due() == 0  # not due before its time: no request
        delays.append(delay)
        clock.advance(delay)
    assert delays[:4] == sorted(delays[:4])  # doubling: each range starts where the last ended
    assert all(4000 <= delay <= 8000 for delay in delays[3:])  # capped from the 4th on
    assert redis_client.hget(keys.event("events", event_id), "last_error") == "HTTP 500"

    assert dispatcher.deliver_due() == 1
    assert len(receiver.requests) == 7
    assert set(receiver.ids()) == {event_id}
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)
    assert outbox.pending_count() == 0
    assert not redis_client.exists(keys.event("events", event_id))
    assert outbox.dead() == []


def test_event_is_given_up_after_max_attempts_logged_and_never_retried(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_data = {**DATA, "marker": "body-must-not-be-logged"}
    event_id = outbox.publish("verification.max_attempts_reached", secret_data)
    receiver.answer(*[Answer(503)] * 10)
    dispatcher = make_dispatcher(max_attempts=3)

    with caplog.at_level(logging.WARNING, logger="ivr.events"):
        for _ in range(3):
            clock.now = due_score(redis_client, event_id)
            assert dispatcher.deliver_due() == 0
    given_up_at = clock.now

    assert len(receiver.requests) == 3
    assert outbox.pending_count() == 0
    assert outbox.dead() == [
        {
            "id": event_id,
            "type": "verification.max_attempts_reached",
            "attempts": 3,
            "created_at": T0,
            "given_up_at": given_up_at,
            "last_error": "HTTP 503",
            "data": secret_data,
        }
    ]
    ttl = redis_client.pttl(keys.event("events", event_id))
    assert 6 * 86_400_000 < ttl <= 7 * 86_400_000
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert event_id in error.getMessage()
    assert "verification.max_attempts_reached" in error.getMessage()
    assert "body-must-not-be-logged" not in caplog.text
    assert "whsec_" not in caplog.text

    clock.advance(86_400_000)
    assert dispatcher.deliver_due() == 0
    assert len(receiver.requests) == 3


def test_two_dispatchers_racing_deliver_each_event_exactly_once(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_url: str,
    clock: Clock,
) -> None:
    published = {outbox.publish("verification.approved", {"n": n}) for n in range(30)}
    # Each dispatcher with its own Redis client, as two workers would have.
    other_client = plain_client(redis_url, decode_responses=True)
    dispatchers = [
        make_dispatcher(),
        make_dispatcher(outbox=EventOutbox(other_client, clock_ms=clock)),
    ]
    barrier = threading.Barrier(len(dispatchers))
    delivered: list[int] = []

    def race(dispatcher: EventDispatcher) -> None:
        barrier.wait()
        delivered.append(dispatcher.deliver_due(limit=50))

    threads = [threading.Thread(target=race, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    other_client.close()

    assert sum(delivered) == 30
    assert sorted(receiver.ids()) == sorted(published)
    assert outbox.pending_count() == 0


def test_an_event_in_flight_is_not_claimed_by_another_dispatcher(
    outbox: EventOutbox, make_dispatcher: Callable[..., EventDispatcher], receiver: Receiver
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    first, second = make_dispatcher(), make_dispatcher()
    seen_by_second: list[int] = []
    receiver.on_request = lambda _index: seen_by_second.append(second.deliver_due())

    assert first.deliver_due() == 1

    assert seen_by_second == [0]  # while the first POST was in flight, nothing was due
    assert receiver.ids() == [event_id]
    assert outbox.pending_count() == 0


def test_a_worker_whose_lease_ran_out_cannot_reschedule_the_event(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    slow, fresh = make_dispatcher(), make_dispatcher()
    receiver.answer(Answer(500), Answer(204))  # the slow worker fails, the fresh one delivers

    def take_over(index: int) -> None:
        if index == 0:  # the slow worker's POST is still in flight past its lease
            clock.advance(60_000)
            assert fresh.deliver_due() == 1

    receiver.on_request = take_over
    assert slow.deliver_due() == 0

    assert receiver.ids() == [event_id, event_id]
    assert outbox.pending_count() == 0  # the slow worker's failure did not bring it back
    assert not redis_client.exists(keys.event("events", event_id))


class WorkerCrash(BaseException):
    """Stands for the worker dying mid-POST: nothing of ours catches it."""


class CrashingSession(requests.Session):
    def post(self, *_args: Any, **_kwargs: Any) -> requests.Response:
        raise WorkerCrash


def test_an_event_whose_post_never_settled_is_retried_after_the_lease(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    in_flight = outbox.publish("verification.approved", DATA)
    clock.advance(1)
    not_yet_posted = outbox.publish("verification.expired", DATA)
    crashing = make_dispatcher(session=CrashingSession(), lease_ms=30_000)

    with pytest.raises(WorkerCrash):
        crashing.deliver_due()

    assert due_score(redis_client, in_flight) == clock.now + 30_000
    assert due_score(redis_client, not_yet_posted) == clock.now  # handed back at once
    healthy = make_dispatcher(lease_ms=30_000)
    assert healthy.deliver_due() == 1
    assert receiver.ids() == [not_yet_posted]
    clock.advance(29_999)
    assert healthy.deliver_due() == 0
    clock.advance(1)
    assert healthy.deliver_due() == 1
    assert receiver.ids() == [not_yet_posted, in_flight]
    assert outbox.pending_count() == 0


def test_a_batch_that_would_outrun_its_lease_hands_back_what_it_did_not_post(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    first = outbox.publish("verification.approved", DATA)
    clock.advance(1)
    second = outbox.publish("verification.approved", DATA)
    receiver.on_request = lambda _index: clock.advance(59_000)  # a slow first POST
    dispatcher = make_dispatcher(timeout=1.0, lease_ms=60_000)

    assert dispatcher.deliver_due() == 1

    assert receiver.ids() == [first]
    assert due_score(redis_client, second) == clock.now
    assert redis_client.hget(keys.event("events", second), "attempts") == "0"
    assert not redis_client.hexists(keys.event("events", second), "lease")
    receiver.on_request = None
    assert dispatcher.deliver_due() == 1
    assert receiver.ids() == [first, second]


def test_the_lease_outlasts_several_attempts_even_with_a_long_timeout(
    make_dispatcher: Callable[..., EventDispatcher],
) -> None:
    assert make_dispatcher(timeout=30.0, lease_ms=60_000).lease_ms == 240_000
    assert make_dispatcher(timeout=1.0, lease_ms=60_000).lease_ms == 60_000


def test_connection_refused_counts_as_a_failed_attempt(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    event_id = outbox.publish("verification.failed", DATA)
    dispatcher = make_dispatcher(url=f"http://127.0.0.1:{closed_port()}/hooks")

    assert dispatcher.deliver_due() == 0

    stored = redis_client.hgetall(keys.event("events", event_id))
    assert stored["attempts"] == "1"
    assert stored["last_error"] == "ConnectionError"
    assert clock.now + 500 <= due_score(redis_client, event_id) <= clock.now + 1000


def test_an_answer_slower_than_the_timeout_counts_as_a_failed_attempt(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    receiver.answer(Answer(204, delay=1.5))
    dispatcher = make_dispatcher(timeout=0.3, lease_ms=10_000)

    started = time.monotonic()
    assert dispatcher.deliver_due() == 0
    assert time.monotonic() - started < 1.4

    stored = redis_client.hgetall(keys.event("events", event_id))
    assert stored["attempts"] == "1"
    assert stored["last_error"] == "ReadTimeout"
    assert outbox.pending_count() == 1


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    outbox: EventOutbox,
    make_dispatcher: Callable[..., EventDispatcher],
    receiver: Receiver,
    redis_client: redis.Redis,
    clock: Clock,
) -> None:
    event_id = outbox.publish("verification.approved", DATA)
    receiver.answer(Answer(302, headers={"Location": receiver.url + "/moved"}))
    dispatcher = make_dispatcher()

    assert dispatcher.deliver_due() == 0

    assert [r.path for r in receiver.requests] == ["/hooks/ivr"]
    assert redis_client.hget(keys.event("events", event_id), "last_error") == "HTTP 302"
    clock.now = due_score(redis_client, event_id)
    assert dispatcher.deliver_due() == 1


def test_an_unknown_event_type_is_refused_and_nothing_is_stored(
    outbox: EventOutbox, redis_client: redis.Redis
) -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        outbox.publish("verification.approve", DATA)
    assert redis_client.dbsize() == 0
    assert "verification.approved" in EVENT_TYPES


def test_publish_is_one_redis_round_trip(
    redis_client: redis.Redis, clock: Clock, redis_url: str
) -> None:
    if redis_url.startswith("redis+cluster://"):
        pytest.skip("counts what goes over one server's connection")
    sent: list[bytes] = []
    base = redis_client.connection_pool.connection_class

    class CountingConnection(base):  # type: ignore[valid-type, misc]
        """Counts what goes over the wire: a pipeline or a script call is one send."""

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append(b"".join(command) if isinstance(command, list) else command)
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool(
        connection_class=CountingConnection, **redis_client.connection_pool.connection_kwargs
    )
    client = redis.Redis(connection_pool=pool)
    outbox = EventOutbox(client, clock_ms=clock)
    outbox.publish("verification.approved", DATA)  # connects, and loads the script once
    sent.clear()

    outbox.publish("verification.approved", DATA)

    assert len(sent) == 1
    assert b"EVALSHA" in sent[0].upper()
    assert outbox.pending_count() == 2
    client.close()


def test_start_delivers_in_the_background_and_stops_when_told(
    redis_client: redis.Redis, receiver: Receiver
) -> None:
    outbox = EventOutbox(redis_client)  # the wall clock
    dispatcher = EventDispatcher(outbox, url=receiver.url, secret=SECRET, timeout=1.0)
    event_id = outbox.publish("verification.approved", DATA)
    thread, stop = dispatcher.start()
    try:
        assert thread.daemon
        deadline = time.monotonic() + 5
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.ids() == [event_id]
    finally:
        stop.set()
        thread.join(5)
        dispatcher.session.close()
    assert not thread.is_alive()
    assert outbox.pending_count() == 0


def test_run_keeps_going_while_redis_is_down(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    down = redis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    rounds: list[float] = []  # a chore runs at the start of every round
    dispatcher = EventDispatcher(
        EventOutbox(down),
        url=receiver.url,
        secret=SECRET,
        timeout=1.0,
        chores=(lambda: rounds.append(time.monotonic()),),
    )
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop, 0.02), daemon=True)

    with caplog.at_level(logging.WARNING, logger="ivr.events"):
        thread.start()
        deadline = time.monotonic() + 30
        while "Redis unavailable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        seen = len(rounds)
        while len(rounds) < seen + 3 and time.monotonic() < deadline:  # a few more rounds
            time.sleep(0.02)
        assert len(rounds) >= seen + 3, "the dispatcher stopped going round"
        alive = thread.is_alive()
        stop.set()
        thread.join(5)

    assert "Redis unavailable" in caplog.text
    assert caplog.text.count("Redis unavailable") == 1  # once per outage, not every round
    assert alive
    assert not thread.is_alive()
    assert receiver.requests == []
    dispatcher.session.close()
