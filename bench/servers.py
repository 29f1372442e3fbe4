"""gunicorn servers for the benchmark: started with the project's own config, stopped for sure.

Each server runs in a session of its own, so stopping it can reach every process it forked by
its process group id, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bench.loadgen import NETWORK_ERRORS, wait_until_answering

HOST = "127.0.0.1"
GUNICORN_CONFIG = "python:ivr.gunicorn_config"
_STOP_TIMEOUT = 15.0
_PROBE = f"POST /__bench_probe HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n".encode()


class ServerFailed(RuntimeError):
    """A server did not start; the message ends with the tail of its log."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class GunicornServer:
    """One gunicorn master serving `app` on a free loopback port."""

    def __init__(self, name: str, app: str, env: Mapping[str, str], log_path: Path,
                 port: int | None = None):
        self.name = name
        self.app = app
        self.env = dict(env)
        self.log_path = log_path
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Launch the master; returns at once (see `wait_ready`)."""
        command = [
            sys.executable, "-m", "gunicorn",
            "--config", GUNICORN_CONFIG,
            # Flags win over the config file: loopback only, and no access log for either server.
            "--bind", f"{HOST}:{self.port}",
            "--access-logfile", os.devnull,
            self.app,
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until a worker answers HTTP; ServerFailed if the master exits or time runs out."""
        assert self._process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise ServerFailed(f"{self.name} exited ({self._process.returncode})"
                                   f"\n{self.log_tail()}")
            try:
                wait_until_answering(HOST, self.port, _PROBE, timeout=0.5)
                return
            except NETWORK_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise ServerFailed(f"{self.name} did not answer in {timeout:.0f} s ({exc})"
                                       f"\n{self.log_tail()}") from None

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL to whatever is left of its process group."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the master leads its own group
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Workers outliving their master, or a master that ignored SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
