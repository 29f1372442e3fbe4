"""The first hour, as a new user meets it: the wheel installed and served from an empty folder
(its commands sharing the server's instance folder), a bad setting refused before any worker
boots, `make run` stopped by killing it, and the development server on loopback only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ivr.store import EmbeddedRedis
from tests.servers import Server, free_port

REPO = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "--config", "python:ivr.gunicorn_config"]
APP = "ivr:create_app()"
IVR = [sys.executable, "-c", "from ivr.cli import main; main()"]


def _environment(**extra: str) -> dict[str, str]:
    """This environment without what would point the app elsewhere (Redis, Twilio, folders)."""
    dropped = ("REDIS_URL", "INSTANCE_PATH", "VOICE_PROMPTS_DIR", "FLOWS_DIR", "PORT", "HOST")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("TWILIO_")}
    return env | extra


def _request(url: str, headers: dict[str, str] | None = None, body: object = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed into a folder of its own (its dependencies
    come from this environment); that folder, for PYTHONPATH."""
    # From a copy: pip builds in the source tree, and a stale build/ there would ride along.
    source = tmp_path_factory.mktemp("source") / "ivr"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "instance", "tests", "__pycache__", "*_cache"
        ),
    )
    build = tmp_path_factory.mktemp("wheel")
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", build],
        check=True,
        capture_output=True,
    )
    (wheel,) = build.glob("ivr-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    return target


def test_the_wheel_ships_the_starting_prompts_flow_and_console(installed):
    (wheel,) = installed.glob("ivr-*.dist-info")
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "ivr").rglob("*")}
    for path in (
        "ivr/starter/voice_prompts/en-US.yaml",
        "ivr/starter/voice_prompts/es-ES.yaml",
        "ivr/starter/flows/default.yaml",
        "ivr/openapi.yaml",
        "ivr/web/console/templates/console/base.html",
        "ivr/web/console/static/console.js",
    ):
        assert path in shipped, f"{path} is not in the wheel ({wheel.name})"
    assert not (installed / "ivr" / "starter" / "flows").is_symlink(), "copied, not linked"


def test_the_installed_wheel_serves_from_an_empty_folder_and_its_commands_agree(
    installed, tmp_path
):
    """The server and `ivr tokens create`, both run from an empty folder, use one instance
    folder there (./instance): the token one makes, the other accepts."""
    folder = tmp_path / "empty"
    folder.mkdir()
    port = free_port()
    env = _environment(PYTHONPATH=str(installed), PORT=str(port), WEB_CONCURRENCY="1")
    where = subprocess.run(
        [sys.executable, "-c", "import ivr; print(ivr.__file__)"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(installed)), "the installed copy, not the checkout"
    server = Server([*GUNICORN, APP], cwd=folder, env=env, log=tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_up(base)
        assert (folder / "instance" / "secret_key").is_file()
        created = subprocess.run(  # noqa: S603
            [*IVR, "tokens", "create", "first-hour"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = created.stdout.split()[-1]
        status, body = _request(
            f"{base}/v1/verifications",
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            {"to": "+14155550107", "channel": "sms"},
        )
        assert status == 201 and body["status"] == "pending"
    finally:
        output = server.stop()
    assert f"{installed}/ivr/starter/flows/default.yaml" in output, output
    assert "embedded redis stopped" in output


def test_a_bad_setting_is_refused_before_any_worker_boots_one_line_each(tmp_path):
    env = _environment(
        INSTANCE_PATH=str(tmp_path),
        PORT=str(free_port()),
        SEND_LIMIT_PER_NUMBER="lots",
        OTP_LENGTH="3",
    )
    started = subprocess.run(  # noqa: S603
        [*GUNICORN, APP], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    lines = [line for line in started.stderr.splitlines() if line.startswith("ivr: ")]
    assert any(line.startswith("ivr: SEND_LIMIT_PER_NUMBER: ") for line in lines), lines
    assert any(line.startswith("ivr: OTP_LENGTH: ") for line in lines), lines
    assert lines[-1].startswith("ivr: not started")
    everything = started.stdout + started.stderr
    assert "Traceback" not in everything
    assert "Listening at" not in everything and "Booting worker" not in everything
    assert not (tmp_path / "redis").exists(), "nothing was started"


@pytest.mark.skipif(not Path(REPO, ".venv", ".installed").exists(), reason="needs make's .venv")
def test_killing_make_run_stops_gunicorn_its_workers_and_the_embedded_redis(tmp_path):
    port = free_port()
    env = _environment(INSTANCE_PATH=str(tmp_path), PORT=str(port), WEB_CONCURRENCY="2")
    make = Server(
        ["make", "--no-print-directory", "run"], cwd=REPO, env=env, log=tmp_path / "make.log"
    )
    make.wait_until_up(f"http://127.0.0.1:{port}")
    embedded = EmbeddedRedis(tmp_path / "redis")
    assert embedded.is_running()
    make.process.kill()  # SIGKILL: make passes nothing on; gunicorn notices its parent is gone
    make.process.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_answers(port) or embedded.is_running()):
        time.sleep(0.2)
    assert not _answers(port), "gunicorn still serves"
    assert not embedded.is_running(), "the embedded Redis was left running"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({}, "127.0.0.1"),  # development: a dev token and admin password are in use
        ({"HOST": "0.0.0.0"}, "0.0.0.0"),  # noqa: S104
        ({"PORT": "8080"}, "0.0.0.0"),  # noqa: S104 - a platform sets PORT; its router connects
        ({"TWILIO_ACCOUNT_SID": "AC" + "1" * 32}, "0.0.0.0"),  # noqa: S104 - Twilio connects
        ({"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "HOST": "127.0.0.1"}, "127.0.0.1"),  # nginx
    ],
)
def test_the_development_server_listens_on_loopback_only(env, host):
    printed = subprocess.run(
        [sys.executable, "-c", "import ivr.gunicorn_config as c; print(c.bind)"],
        env=_environment(**env),
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == f"{host}:{env.get('PORT', '5000')}"


def test_the_wheel_is_a_zip_of_the_package_alone(installed):
    """Nothing of the checkout (tests, instance folders, virtualenvs) rides along."""
    (record,) = installed.glob("ivr-*.dist-info/RECORD")
    names = [line.split(",")[0] for line in record.read_text().splitlines()]
    assert names, "pip wrote what it installed"
    assert not [n for n in names if n.startswith(("tests/", "instance/", ".venv/", "flows/"))]
    assert not [n for n in names if "/instance/" in n or "/.venv/" in n]
