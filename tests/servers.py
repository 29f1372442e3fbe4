"""Servers the tests run as processes of their own (gunicorn, `make run`), with their output
written to a file.

Never a pipe: a pipe nobody reads fills at 64 KB, and the server's next log write then blocks
the worker mid-request, so a test that makes many requests (each one an access-log line) sees
a timeout that has nothing to do with what it tests. A file never fills, and reading it does
not wait for the server to stop.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A process started with its stdout and stderr in `log`; `output()` reads what it said
    so far, `stop()` ends it (SIGTERM, then waits) and returns everything it said."""

    def __init__(
        self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path
    ) -> None:
        self.log = log
        with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and commands
                list(command), cwd=cwd, env=dict(env), stdout=sink, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_until_up(self, base: str, seconds: float = 60, *, healthy: bool = True) -> None:
        """Returns once `base`/healthz answers (with `healthy=False`, a 503 too: the server
        serves while its Redis is away); polls with a deadline (a loaded machine starts
        gunicorn slowly), and fails at once, with what it said, if the process exited."""
        deadline = time.monotonic() + seconds
        while True:
            if not self.running():
                raise AssertionError(f"the server exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                    return
            except urllib.error.HTTPError as answered:
                answered.close()
                if not healthy and answered.code == 503:
                    return
                if time.monotonic() > deadline:
                    message = f"/healthz answered {answered.code}:\n{self.output()}"
                    raise AssertionError(message) from None
                time.sleep(0.1)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the server did not start in time:\n{self.output()}"
                    ) from None
                time.sleep(0.1)

    def stop(self, timeout: float = 30) -> str:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        return self.output()
