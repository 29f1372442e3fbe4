"""Two app instances, as on two hosts behind a load balancer: different ports and instance
folders, the same Redis (or cluster), SECRET_KEY and Twilio account. One call's webhooks go to
each in turn, a code started on one is checked on the other, and a flow edit reaches both."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import (
    ACCOUNT_SID,
    API_TOKEN,
    AUTH_TOKEN,
    CALLER_ID,
    PUBLIC_BASE_URL,
    SECRET_KEY,
)
from tests.servers import Server, free_port
from tests.test_api import sms_code
from tests.test_serving import GUNICORN, REPO

CALLER = "+14155550177"


class Host:
    """One running instance: its base URL, and requests to it as Twilio and as an API client."""

    def __init__(self, server: Server, port: int):
        self.server, self.base = server, f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def webhook(self, url: str, params: dict[str, str]) -> ET.Element:
        """POST `params` to `url` (absolute, as the TwiML names it) on this host, signed as
        Twilio signs it: over PUBLIC_BASE_URL, whichever host the balancer picked."""
        parts = urlsplit(url if "://" in url else PUBLIC_BASE_URL + url)
        public = f"{PUBLIC_BASE_URL}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        signature = RequestValidator(AUTH_TOKEN).compute_signature(public, params)
        local = f"{self.base}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        request = urllib.request.Request(
            local, data=urlencode(params).encode(), headers={"X-Twilio-Signature": signature}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return ET.fromstring(response.read())


@pytest.fixture
def hosts(redis_url, redis_client, twilio_api, tmp_path) -> Iterator[tuple[Host, Host]]:
    from ivr.config import DEFAULT_FLOWS_DIR

    flows = tmp_path / "flows"  # one folder both read (a deploy puts the same files on each)
    shutil.copytree(DEFAULT_FLOWS_DIR, flows)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TWILIO_"))}
    base_env |= {
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_CALLER_ID": CALLER_ID,
        "TWILIO_API_BASE_URL": twilio_api.url,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "SECRET_KEY": SECRET_KEY,
        "IVR_API_TOKEN": API_TOKEN,
        "FLOWS_DIR": str(flows),
        "APP_NAME": "Acme",
        "WEB_CONCURRENCY": "1",
        "HOST": "127.0.0.1",
    }
    started = []
    try:
        for name in ("a", "b"):
            port = free_port()
            env = base_env | {"PORT": str(port), "INSTANCE_PATH": str(tmp_path / name)}
            server = Server(GUNICORN, cwd=REPO, env=env, log=tmp_path / f"{name}.log")
            started.append(Host(server, port))
        for host in started:
            host.server.wait_until_up(host.base)
        yield started[0], started[1]
    finally:
        for host in started:
            host.server.stop()


def test_a_call_alternates_hosts_and_a_code_started_on_one_is_checked_on_the_other(
    hosts, twilio_api
):
    a, b = hosts
    assert a.api("PUT", "/v1/customers/12345678", {"phone": CALLER, "name": "Ada"})[0] in (200, 201)

    # An API client: start on one host, check on the other.
    status, started = a.api("POST", "/v1/verifications", {"to": "+14155550178", "channel": "sms"})
    assert status == 201
    status, checked = b.api(
        "POST", "/v1/verifications/check", {"sid": started["sid"], "code": sms_code(twilio_api)}
    )
    assert (status, checked["status"]) == (200, "approved")

    # A caller: every webhook of the call lands on the other host than the one before.
    call = {"CallSid": "CA" + "3" * 32, "From": CALLER, "To": CALLER_ID, "AccountSid": ACCOUNT_SID}
    answer = a.webhook("/voice/incoming", call)
    for host, digits in ((b, "1"), (a, "1")):  # English; the main menu's account help
        answer = host.webhook(gather(answer).get("action"), call | {"Digits": digits})
    assert "code" in " ".join(answer.itertext()).lower(), ET.tostring(answer).decode()
    answer = b.webhook(gather(answer).get("action"), call | {"Digits": sms_code(twilio_api)})
    assert answer.find(".//Dial") is not None or answer.find(".//Enqueue") is not None, (
        "the verified caller is handed to an agent: " + ET.tostring(answer).decode()
    )
    assert "sorry" not in " ".join(answer.itertext()).lower()


def gather(answer: ET.Element) -> ET.Element:
    found = answer.find(".//Gather")
    assert found is not None, ET.tostring(answer).decode()
    return found


def test_a_flow_edit_reaches_both_hosts(hosts, tmp_path):
    a, b = hosts
    path = Path(tmp_path / "flows" / "default.yaml")
    path.write_text(path.read_text().replace("prompt: flow.welcome", "prompt: flow.opening_hours"))

    def greeting(host: Host) -> str:
        call = {"CallSid": "CA" + os.urandom(16).hex(), "From": CALLER, "To": CALLER_ID}
        return " ".join(host.webhook("/voice/incoming", call).itertext())

    deadline = time.monotonic() + 20
    while not all("around the clock" in greeting(host) for host in (a, b)):
        assert time.monotonic() < deadline, "the edit did not reach both hosts"
        time.sleep(0.2)
