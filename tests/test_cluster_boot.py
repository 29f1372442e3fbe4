"""A Redis Cluster that is away when the app boots: the app starts all the same, answers as in
any outage (503 problem+json, polite TwiML, /healthz down), and serves once the cluster comes
up, without a restart. redis-py maps a cluster's slots when its client is made, so this used
to stop every worker from booting.

Each test points the app at ports where nothing listens yet and starts its own cluster there,
so it runs once, whatever backends the suite runs on.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from ivr.cli import main
from tests.conftest import CALLER_ID, Api, build_app, spoken, twilio_post, twiml
from tests.redis_cluster import LocalCluster, free_ports, wait_for
from tests.servers import Server, free_port
from tests.test_api import sms_code
from tests.test_serving import GUNICORN, REPO

NUMBER = "+14155550123"


def _seeds(ports: list[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)


def _call() -> dict[str, str]:
    return {"CallSid": "CA" + "7" * 32, "From": NUMBER, "To": CALLER_ID}


def test_an_app_booted_before_its_cluster_answers_as_in_an_outage_then_serves(tmp_path, twilio_api):
    ports = free_ports(6)
    app = build_app(_seeds(ports), twilio_api, tmp_path)  # no seed answers: it boots anyway
    client = app.test_client()
    api = Api(client)

    apology = twiml(twilio_post(client, "/voice/incoming", _call()))
    assert "something went wrong" in spoken(apology)
    refused = api.start(to=NUMBER, channel="sms")
    assert refused.status_code == 503
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["type"] == "urn:ivr:problem:store_unavailable"
    assert refused.headers.get("Retry-After")
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["store"] == {
        "backend": "cluster",
        "status": "unavailable",
        "error": "ClusterUnavailable",
    }
    assert client.get("/readyz").get_json()["failed"] == ["redis"]
    assert twilio_api.messages() == [], "nothing was sent for a verification never stored"

    cluster = LocalCluster(tmp_path / "cluster", ports=ports).start()
    try:
        wait_for(lambda: client.get("/healthz").status_code == 200, "the app to map the slots")
        started = api.start(to=NUMBER, channel="sms")
        assert started.status_code == 201, started.get_data(as_text=True)
        sid = started.get_json()["sid"]
        checked = api.check(sms_code(twilio_api), sid=sid)
        assert checked.get_json()["status"] == "approved"
        greeting = twiml(twilio_post(client, "/voice/incoming", _call()))
        assert "something went wrong" not in spoken(greeting)
    finally:
        cluster.stop()


def test_gunicorn_serves_while_no_seed_of_the_cluster_answers(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TWILIO_"))}
    env |= {
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "REDIS_URL": _seeds(free_ports(3)),
    }
    server = Server(GUNICORN, cwd=REPO, env=env, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_up(base, healthy=False)
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert answer.value.code == 503
        assert json.loads(answer.value.read())["store"]["error"] == "ClusterUnavailable"
        assert server.running()
    finally:
        output = server.stop()
    assert "Worker failed to boot" not in output
    assert "redis cluster: cannot map the slots" in output, "one line says why, once"
    assert "Traceback" not in output


def test_check_config_says_the_cluster_does_not_answer_without_a_traceback(monkeypatch):
    monkeypatch.setenv("REDIS_URL", _seeds(free_ports(2)))
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exception is None, result.output
    assert result.exit_code == 0, "as with one server that is down: said, not refused"
    assert "REDIS_URL does not answer (ClusterUnavailable)." in result.stdout
    production = CliRunner().invoke(main, ["check-config", "--production"])
    assert production.exit_code == 1
    assert "REDIS_URL does not answer (ClusterUnavailable): the app cannot serve" in (
        production.stdout
    )
