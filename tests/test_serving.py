"""The embedded Redis and gunicorn as `make run` starts them: one server shared by all workers."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from ivr.store import EmbeddedRedis
from tests.servers import Server, free_port

REPO = Path(__file__).resolve().parent.parent


def test_a_second_process_reuses_the_running_embedded_server(tmp_path):
    first = EmbeddedRedis(tmp_path)
    url = first.ensure_running()
    try:
        second = EmbeddedRedis(tmp_path)
        assert second.ensure_running() == url
        client = redis.Redis.from_url(url)
        client.set("shared", "yes")
        assert redis.Redis(unix_socket_path=str(second.socket_path)).get("shared") == b"yes"
        second.stop()  # not its owner: a no-op
        assert first.is_running()
    finally:
        first.stop(force=True)
    assert not first.is_running()
    assert (tmp_path / "ivr.rdb").exists(), "data is saved on shutdown"


def test_the_owner_leaves_the_server_running_while_others_use_it(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    other = redis.Redis.from_url(embedded.ensure_running())
    other.ping()
    embedded.stop()
    assert embedded.is_running()
    other.close()
    embedded.stop(force=True)


def test_long_instance_paths_fall_back_to_a_short_socket_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    embedded = EmbeddedRedis(deep)
    assert len(str(embedded.socket_path)) < 100
    try:
        assert redis.Redis.from_url(embedded.ensure_running()).ping()
    finally:
        embedded.stop(force=True)


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def _procfile_command() -> list[str]:
    """The Procfile's web command, with gunicorn taken from this interpreter's environment."""
    line = next(
        line for line in (REPO / "Procfile").read_text().splitlines() if line.startswith("web:")
    )
    program, *arguments = shlex.split(line.removeprefix("web:"))
    assert program == "gunicorn"
    return [sys.executable, "-m", "gunicorn", *arguments]


GUNICORN = _procfile_command()
IVR_SERVE = [str(Path(sys.executable).parent / "ivr"), "serve"]


@pytest.mark.parametrize("command", [GUNICORN, IVR_SERVE], ids=["procfile", "ivr-serve"])
def test_gunicorn_workers_share_the_embedded_redis_and_stop_it_on_exit(tmp_path, command):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
    }
    env |= {"PORT": str(port), "WEB_CONCURRENCY": "2", "INSTANCE_PATH": str(tmp_path)}
    server = Server(command, cwd=REPO, env=env, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_up(base)
        status, health = _get(f"{base}/healthz")
        assert status == 200
        assert health["store"]["backend"] == "embedded"
        assert health["carrier"] == "simulated"
        token = (tmp_path / "api_token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        sids = set()
        for _ in range(4):  # spread over both workers: each sees the others' writes
            status, body = _get(
                f"{base}/v1/verifications",
                headers,
                json.dumps({"to": "+14155550123", "channel": "sms"}).encode(),
            )
            assert status == 201
            sids.add(body["sid"])
        assert len(sids) == 1, "every worker found the same pending verification"
        assert EmbeddedRedis(tmp_path / "redis").is_running()
    finally:
        output = server.stop()
    assert "embedded redis stopped" in output, output
    assert not EmbeddedRedis(tmp_path / "redis").is_running()


def test_the_fallback_socket_folder_must_be_private(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    shared = tmp_path / f"ivr-redis-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private folder"):
        EmbeddedRedis(tmp_path / ("d" * 60) / ("e" * 60))


def _signed_call(base: str, token: str, to: str = "+15005550006") -> str:
    """A new inbound call to our running server, signed as Twilio signs it; the TwiML text."""
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    url = f"{base}/voice/incoming"
    params = {"CallSid": "CA" + os.urandom(16).hex(), "From": "+14155550123", "To": to}
    signature = RequestValidator(token).compute_signature(url, params)
    request = urllib.request.Request(
        url, data=urlencode(params).encode(), headers={"X-Twilio-Signature": signature}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_every_worker_serves_a_saved_flow_edit_without_a_restart(tmp_path):
    import shutil

    from ivr.config import DEFAULT_FLOWS_DIR

    flows = tmp_path / "flows"
    shutil.copytree(DEFAULT_FLOWS_DIR, flows)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TWILIO_"))}
    env |= {
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "FLOWS_DIR": str(flows),
        "APP_NAME": "Acme",
    }
    server = Server(GUNICORN, cwd=REPO, env=env, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_up(base)
        token = (tmp_path / "instance" / "webhook_auth_token").read_text().strip()
        assert all("Thank you for calling Acme" in _signed_call(base, token) for _ in range(4))
        path = flows / "default.yaml"
        original = path.read_text(encoding="utf-8")
        path.write_text(original.replace("prompt: flow.welcome", "prompt: flow.opening_hours"))
        # Each worker looks at the folder and Redis at most once a second, and only when a call
        # reaches it: poll, with a deadline, until six calls in a row hear the edit and a
        # reload interval has passed since it was first heard (published). A worker no call
        # reached meanwhile may still serve the old version, but its next call makes it look.
        deadline = time.monotonic() + 20
        answers: list[str] = []
        first_heard = None
        while time.monotonic() < deadline:
            answers = [_signed_call(base, token) for _ in range(6)]
            if first_heard is None and any("around the clock" in a for a in answers):
                first_heard = time.monotonic()
            settled = first_heard is not None and time.monotonic() - first_heard > 1.2
            if settled and all("around the clock" in answer for answer in answers):
                break
        assert all("around the clock" in answer for answer in answers), answers
        path.write_text(original.replace("start: welcome", "start: nowhere"))
        # For longer than a worker's reload interval, every call still hears the last good one.
        watched_until = time.monotonic() + 1.5
        while time.monotonic() < watched_until:
            assert "around the clock" in _signed_call(base, token), (
                "a broken edit is refused; the last good version keeps serving"
            )
        assert all("around the clock" in _signed_call(base, token) for _ in range(4)), (
            "a broken edit is refused; the last good version keeps serving"
        )
    except (AssertionError, OSError) as failure:
        output = server.stop()
        raise AssertionError(f"{failure}\n--- what the server logged ---\n{output}") from None
    finally:
        output = server.stop()
    assert "REFUSED" in output, output
