"""/metrics: what it counts (verifications, checks, refusals, sends in flight, Twilio, webhooks,
IVR calls, events, Redis), who may read it, and that under gunicorn every worker is counted."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from ivr.events import EventDispatcher, EventOutbox
from ivr.simulator import PhoneSimulator
from tests.conftest import AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL, Api, twilio_post
from tests.event_receiver import Answer, Receiver
from tests.servers import Server, free_port

REPO = Path(__file__).resolve().parent.parent
TO = "+14155550131"
METRICS_TOKEN = "metrics-token-0123456789abcdef"
EVENTS_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Scrape:
    """One reading of /metrics, parsed: sample values by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def label_values(self) -> set[str]:
        return {value for sample in self.samples for value in sample.labels.values()}


def scrape(client, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return Scrape(response.get_data(as_text=True))


def increase(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def sms_code(twilio_api) -> str:
    return re.search(r"\d{6}", twilio_api.messages()[-1].value("Body")).group(0)


# -- what is counted ---------------------------------------------------------------------------


def test_a_verification_is_counted_from_start_through_delivery_to_approval(client, api, twilio_api):
    before = scrape(client)
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    provider_sid = twilio_api.last_sid
    twilio_post(
        client,
        f"/sms/status/{sid}",
        {"MessageSid": provider_sid, "MessageStatus": "delivered", "AccountSid": "AC" + "1" * 32},
    )
    code = sms_code(twilio_api)
    wrong = "1" * 6 if code != "1" * 6 else "2" * 6
    assert api.check(wrong, to=TO).get_json()["valid"] is False
    assert api.check(code, to=TO).get_json()["valid"] is True
    after = scrape(client)

    def counted(name: str, **labels: str) -> float:
        return increase(before, after, name, **labels)

    assert counted("ivr_verifications_started_total", channel="sms") == 1
    assert counted("ivr_verifications_delivered_total", channel="sms") == 1
    assert counted("ivr_verifications_approved_total", channel="sms") == 1
    assert counted("ivr_verification_checks_total", outcome="wrong") == 1
    assert counted("ivr_verification_checks_total", outcome="approved") == 1
    assert counted("ivr_code_sends_started_total", channel="sms") == 1
    assert counted("ivr_code_sends_finished_total", channel="sms", result="accepted") == 1
    assert counted("ivr_twilio_requests_total", operation="sms", status="ok") == 1
    assert counted("ivr_twilio_request_duration_seconds_count", operation="sms") == 1
    route = {"route": "/v1/verifications", "method": "POST", "status": "201"}
    assert counted("ivr_http_requests_total", **route) == 1
    webhook = {"route": "/sms/status/<sid>", "method": "POST"}
    assert counted("ivr_http_requests_total", **webhook, status="204") == 1
    assert counted("ivr_http_request_duration_seconds_count", **webhook) == 1
    assert counted("ivr_redis_command_duration_seconds_count", command="EVALSHA") >= 4


def test_refused_sends_are_counted_by_the_policy_and_by_the_limit(make_app):
    app = make_app(allowed_countries="US", send_limit_per_number="1/10m")
    client = app.test_client()
    api = Api(client)
    before = scrape(client)
    assert api.start(to="+33612345678", channel="sms").status_code == 400
    assert api.start(to=TO, channel="sms").status_code == 201
    assert api.start(to=TO, channel="sms").status_code == 429
    after = scrape(client)
    policy = {"by": "policy", "reason": "country_not_allowed"}
    assert increase(before, after, "ivr_sends_refused_total", **policy) == 1
    assert increase(before, after, "ivr_sends_refused_total", by="limit", reason="number") == 1
    failed = {"channel": "sms", "reason": "rate_limited"}
    assert increase(before, after, "ivr_verifications_failed_total", **failed) == 1


def test_a_send_in_flight_is_started_and_not_finished_until_twilio_answers(make_app, twilio_api):
    """Defect 9: a send is `requested` in Redis between the two counters; a worker that died
    there would leave the difference for good."""
    client = make_app(twilio_http_timeout=30).test_client()
    before = scrape(client)
    twilio_api.hold()
    answers: list[int] = []
    sending = threading.Thread(
        target=lambda: answers.append(Api(client).start(to=TO, channel="call").status_code)
    )
    sending.start()
    try:
        deadline = time.monotonic() + 10
        while not twilio_api.calls() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the request to arrive, with a deadline
        assert twilio_api.calls(), "the call reached the stand-in"
        during = scrape(client)
    finally:
        twilio_api.release()
        sending.join(timeout=30)
    after = scrape(client)

    def in_flight(reading: Scrape) -> float:
        return reading.value("ivr_code_sends_started_total") - reading.value(
            "ivr_code_sends_finished_total"
        )

    assert answers == [201]
    assert in_flight(during) - in_flight(before) == 1
    assert in_flight(after) - in_flight(before) == 0


def test_a_twilio_error_is_counted_by_its_status_and_as_a_failed_send(client, api, twilio_api):
    before = scrape(client)
    twilio_api.fail_next(status=400, body={"code": 21211, "message": "bad To", "status": 400})
    assert api.start(to=TO, channel="call").status_code == 400
    after = scrape(client)
    assert increase(before, after, "ivr_twilio_requests_total", operation="call", status="400")
    finished = {"channel": "call", "result": "failed"}
    assert increase(before, after, "ivr_code_sends_finished_total", **finished) == 1
    failed = {"channel": "call", "reason": "carrier_error"}
    assert increase(before, after, "ivr_verifications_failed_total", **failed) == 1


def test_ivr_calls_are_counted_by_flow_and_outcome(app, api, twilio_api):
    api.put("/v1/customers/12345678", json={"phone": "+14155550161", "name": "Ada", "sms": True})
    client = app.test_client()
    phone = PhoneSimulator(app, AUTH_TOKEN)
    before = scrape(client)

    def call(*keys: str) -> str:
        remaining = list(keys)

        def press(_transcript: object) -> str | None:
            pressed = remaining.pop(0) if remaining else None
            return sms_code(twilio_api) + "#" if pressed == "code" else pressed

        url = f"{PUBLIC_BASE_URL}/voice/incoming"
        return phone.call(url, from_="+14155550161", to=CALLER_ID, keys=press).ended_by

    assert call("1", "1", "code") == "enqueue"  # English, account help, the right code
    assert call("1", "1", "000000#", "111111#", "222222#") == "enqueue"
    after = scrape(client)
    verified = {"flow": "default", "outcome": "agent_verified"}
    assert increase(before, after, "ivr_calls_total", **verified) == 1
    unverified = {"flow": "default", "outcome": "agent_unverified"}
    assert increase(before, after, "ivr_calls_total", **unverified) == 1
    answered = {"route": "/voice/incoming", "method": "POST", "status": "200"}
    assert increase(before, after, "ivr_http_requests_total", **answered) == 2
    steps = {"route": "/voice/flow/<int:step>", "method": "POST"}
    assert increase(before, after, "ivr_http_request_duration_seconds_count", **steps) >= 6


# Not the call's: /metrics asks Redis whether it is up (PING, INFO), and each process reads the
# flows' and prompts' publish generation (GET) at most once a second, on whichever request
# finds it due: on a slow machine, one of these.
NOT_THE_CALLS_COMMANDS = {"PING", "INFO", "GET"}


def test_a_new_call_costs_redis_one_round_trip_and_never_a_script_check(client, redis_client, api):
    """A caller not on file: the call's state, the Calls list and the caller's phone entry
    (read to choose the language) in one round trip; on a cluster the Calls list, in a slot of
    its own, takes one more. A caller on file with a language costs two more: their record,
    and the first turn saved again in their language."""
    api.put("/v1/customers/12345678", {"phone": "+14155550188", "name": "Ada", "locale": "es-ES"})
    on_cluster = isinstance(redis_client, RedisCluster)
    name = "ivr_redis_command_duration_seconds_count"

    def new_call(number: int, caller: str = "+14155550177") -> dict[str, float]:
        """The round trips the call's answer took, by command (PIPELINE for a pipeline)."""
        before = scrape(client)
        answer = twilio_post(
            client,
            "/voice/incoming",
            {"CallSid": f"CA{number:032x}", "From": caller, "To": CALLER_ID},
        )
        assert answer.status_code == 200
        after = scrape(client)
        return {
            sample.labels["command"]: increase(before, after, name, **sample.labels)
            for sample in after.samples
            if sample.name == name
            and increase(before, after, name, **sample.labels)
            and sample.labels["command"] not in NOT_THE_CALLS_COMMANDS
        }

    calls_list = 1 if on_cluster else 0
    new_call(1)  # the first call of a worker loads what it caches
    assert new_call(2) == {"PIPELINE": 1 + calls_list}
    redis_client.script_flush()  # a restarted or failed-over Redis: the script is gone
    assert {"SCRIPT LOAD", "EVALSHA"} <= set(new_call(3)), "loaded again, then run"
    flows = client.application.extensions["ivr"].flows
    for call in (2, 3):
        assert len(flows.states.journey(f"CA{call:032x}")) == 1, "saved once"

    known = f"CA{9:032x}"
    assert new_call(9, caller="+14155550188") == {
        "PIPELINE": 1 + calls_list,
        "HGETALL": 1,
        "EVALSHA": 1,
    }
    journey = flows.states.journey(known)
    assert len(journey) == 1, "the first turn, done again in Spanish, took the first one's place"
    assert {"kind": "language_from_record", "locale": "es-ES"} in journey[0]["effects"]
    assert flows.states.load(known).locale == "es-ES"
    assert [sid for sid, _, _ in flows.states.recent()].count(known) == 1


def test_a_flow_turn_that_fails_counts_as_an_error(make_app):
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    client = app.test_client()
    before = scrape(client)
    twilio_post(
        client, "/voice/incoming", {"CallSid": "CA" + "7" * 32, "From": TO, "To": CALLER_ID}
    )
    after = scrape(client)
    assert increase(before, after, "ivr_calls_total", flow="default", outcome="error") == 1
    assert increase(before, after, "ivr_redis_errors_total", error="ConnectionError") >= 1
    assert after.value("ivr_redis_up") == 0


def test_event_deliveries_are_counted_delivered_retried_and_dead_lettered(redis_client, client):
    receiver = Receiver()
    try:
        receiver.answer(Answer(204), Answer(500), Answer(500))
        outbox = EventOutbox(redis_client)
        dispatcher = EventDispatcher(
            outbox, url=receiver.url, secret=EVENTS_SECRET, max_attempts=2, base_delay_ms=1
        )
        before = scrape(client)
        outbox.publish("verification.approved", {"sid": "VE" + "0" * 32})
        assert dispatcher.deliver_due() == 1
        outbox.publish("verification.expired", {"sid": "VE" + "1" * 32})
        assert dispatcher.deliver_due() == 0  # HTTP 500: retried
        deadline = time.monotonic() + 10
        while not outbox.dead() and time.monotonic() < deadline:
            dispatcher.deliver_due()  # due again within 1 ms; the second 500 gives up
        after = scrape(client)
    finally:
        receiver.stop()
    assert increase(before, after, "ivr_events_total", outcome="published") == 2
    assert increase(before, after, "ivr_events_total", outcome="delivered") == 1
    assert increase(before, after, "ivr_events_total", outcome="retried") == 1
    assert increase(before, after, "ivr_events_total", outcome="dead_lettered") == 1


def test_with_an_events_webhook_the_outbox_backlog_is_read_at_scrape_time(make_app, redis_client):
    app = make_app(
        events_webhook_url="https://app.example.test/hooks", events_webhook_secret=EVENTS_SECRET
    )
    past = int(time.time() * 1000) - 90_000
    EventOutbox(redis_client, clock_ms=lambda: past).publish("verification.approved", {})
    reading = scrape(app.test_client())
    assert reading.value("ivr_events_pending") == 1
    assert reading.value("ivr_events_oldest_due_age_seconds") >= 90
    assert reading.value("ivr_events_dead") == 0
    assert reading.value("ivr_redis_up") == 1


# -- who may read it ---------------------------------------------------------------------------


def test_with_metrics_token_set_only_its_bearer_reads_the_metrics(make_app):
    client = make_app(metrics_token=METRICS_TOKEN).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    api_token = {"Authorization": "Bearer test-api-token-0123456789"}
    assert client.get("/metrics", headers=api_token).status_code == 401, "API tokens do not"
    scrape(client, Authorization=f"Bearer {METRICS_TOKEN}")
    remote = client.get(
        "/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert remote.status_code == 200, "the token works from anywhere"


def test_without_a_token_only_a_direct_loopback_request_reads_the_metrics(client):
    scrape(client)  # the test client connects from 127.0.0.1
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert remote.status_code == 403
    assert remote.get_json()["type"] == "urn:ivr:problem:forbidden"
    # nginx on the same host connects from loopback, but says whom it forwards
    forwarded = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert forwarded.status_code == 403


def test_labels_hold_no_number_code_sid_or_token(client, api, twilio_api):
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    api.check(code, sid=sid)
    client.get(f"/v1/verifications/{sid}?to={TO}", headers=api.headers)
    client.get("/v1/customers/99999999", headers=api.headers)
    client.get(f"/no/such/path/{code}")
    reading = scrape(client)
    for value in reading.label_values():
        for secret in (TO, TO.lstrip("+"), code, sid, "test-api-token", "99999999"):
            assert secret not in value, (value, secret)
    assert reading.value("ivr_http_requests_total", route="(unmatched)") >= 1
    routes = {sample.labels.get("route") for sample in reading.samples}
    assert any(re.fullmatch(r"/v1/verifications/<[\w:]*sid>", str(r)) for r in routes), routes


# -- under gunicorn ----------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


def _until(condition, what: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


def _healthz(base: str) -> bool:
    try:
        return _get(f"{base}/healthz")[0] == 200
    except OSError:
        return False


def test_under_gunicorn_every_worker_is_counted_even_after_it_died(tmp_path):
    """Two workers count into files of their own; after both are killed and replaced, a scrape
    still reports every request they served. The folder starts empty; logs are JSON."""
    stale = tmp_path / "metrics" / "counter_1.db"
    stale.parent.mkdir()
    stale.write_bytes(b"left by an earlier server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TWILIO_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "INSTANCE_PATH": str(tmp_path),
        "LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "python:ivr.gunicorn_config"]
    server = Server([*command, "ivr:create_app()"], cwd=REPO, env=env, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    served = 0
    try:
        _until(lambda: _healthz(base), "gunicorn to answer")
        served += 1
        assert not stale.exists(), "a new server starts from an empty metrics folder"

        def booted() -> list[int]:
            return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", server.output())]

        first = _until(lambda: len(booted()) >= 2 and booted(), "two workers")
        answered_id = "trace-0123456789abcdef"
        for _ in range(5):
            status, headers, _body = _get(f"{base}/healthz", {"X-Request-Id": answered_id})
            assert (status, headers["X-Request-Id"]) == (200, answered_id)
            served += 1
        for pid in first[:2]:
            os.kill(pid, signal.SIGKILL)
        _until(lambda: len(booted()) >= 4, "two new workers")
        _until(lambda: _healthz(base), "the new workers to answer")
        served += 1

        def counted() -> float:
            _status, _headers, body = _get(f"{base}/metrics")
            reading = Scrape(body.decode())
            return reading.value("ivr_http_requests_total", route="/healthz", status="200")

        assert counted() == served, "the dead workers' requests are still counted"
        folder = tmp_path / "metrics"
        assert any((folder / f"counter_{pid}.db").exists() for pid in first[:2]), "kept"
    finally:
        output = server.stop()
    records = [json.loads(line) for line in output.splitlines() if line.strip()]  # all JSON
    access = [r for r in records if r.get("logger") == "gunicorn.access"]
    assert any(r.get("request_id") == answered_id and r["path"] == "/healthz" for r in access)
    assert any(r.get("logger") == "gunicorn.error" for r in records)
