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
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis

from bench.loadgen import NETWORK_ERRORS, RequestFeed, measure, wait_until_answering
from ivr.config import Settings
from ivr.store import EmbeddedRedis

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

    def __init__(
        self,
        name: str,
        app: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        access_log: bool = False,
    ):
        self.name = name
        self.app = app
        self.env = dict(env)
        self.log_path = log_path
        # Off for the bench (both servers alike); on for the soak, which serves as `make run`.
        self.access_log = access_log
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        return self._process.pid if self._process is not None else None

    def worker_pids(self) -> list[int]:
        """The master's workers now (gunicorn may have replaced some); [] off Linux."""
        if self._process is None:
            return []
        try:
            return _workers_of(self._process.pid)
        except OSError:
            return []

    def start(self) -> None:
        """Launch the master; returns at once (see `wait_ready`)."""
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            GUNICORN_CONFIG,
            # Flags win over the config file: loopback only, and (unless asked) no access log.
            "--bind",
            f"{HOST}:{self.port}",
            *(() if self.access_log else ("--access-logfile", os.devnull)),
            self.app,
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def wait_ready(self, workers: int, timeout: float = 30.0) -> None:
        """Block until each of `workers` workers answers HTTP (as far as /proc can tell; else
        until one does). ServerFailed if the master exits or time runs out."""
        assert self._process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited ({self._process.returncode})\n{self.log_tail()}"
                )
            try:
                wait_until_answering(HOST, self.port, _PROBE, timeout=0.5)
                # Zero seconds: only open (and spread) connections, to see who accepts them.
                probe = measure(
                    HOST,
                    self.port,
                    RequestFeed([_PROBE]),
                    seconds=0,
                    connections=2 * workers,
                    owners=self.connections_by_worker,
                )
                if not probe.spread or (len(probe.spread) >= workers and min(probe.spread)):
                    return
                serving = sum(1 for count in probe.spread if count)
                problem = f"{serving} of {workers} workers answering"
            except NETWORK_ERRORS as exc:
                problem = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.name} not ready in {timeout:.0f} s ({problem})\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL to whatever is left of its process group."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the master leads its own group
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_TIMEOUT)
        # Workers outliving their master, or a master that ignored SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def connections_by_worker(self, client_ports: Sequence[int]) -> dict[int, list[int]]:
        """Which worker holds each of our connections: worker pid -> our local ports, every
        worker listed (with [] when it holds none); {} where /proc cannot tell (not Linux).

        Why: gunicorn's workers race to accept, and a burst of connects often lands 12-16 of
        16 on one worker, halving throughput at random; the load generator uses this to spread
        its connections evenly, as steady traffic from many clients would.
        """
        if self._process is None:
            return {}
        try:
            workers = _workers_of(self._process.pid)
            server_ends = _server_socket_inodes(self.port, set(client_ports))
            spread: dict[int, list[int]] = {pid: [] for pid in workers}
            for pid in workers:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.startswith("socket:[") and int(target[8:-1]) in server_ends:
                            spread[pid].append(server_ends[int(target[8:-1])])
        except (OSError, ValueError):
            return {}
        return spread

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _workers_of(master: int) -> list[int]:
    """The pids of a gunicorn master's workers: its children running the same command
    (which leaves out an embedded redis-server the master may have started)."""
    command = Path(f"/proc/{master}/cmdline").read_bytes()
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == master and (entry / "cmdline").read_bytes() == command:
                workers.append(int(entry.name))
    return workers


def _server_socket_inodes(server_port: int, client_ports: set[int]) -> dict[int, int]:
    """Socket inode of the server end of each established loopback connection from one of
    `client_ports` -> that client port."""
    ends = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state != "01":  # ESTABLISHED
            continue
        if int(local.rsplit(":", 1)[1], 16) != server_port:
            continue
        client_port = int(remote.rsplit(":", 1)[1], 16)
        if client_port in client_ports:
            ends[inode] = client_port
    return ends


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the app's settings (a developer's TWILIO_*
    must not turn a benchmark into real calls)."""
    ours = {name.upper() for name in Settings.model_fields} | {"INSTANCE_PATH", "GUNICORN_THREADS"}
    return {key: value for key, value in os.environ.items() if key.upper() not in ours}


def stop_embedded_redis(directory: Path) -> None:
    """Shut down an embedded Redis a server left behind (its master normally stops it)."""
    embedded = EmbeddedRedis(directory)
    if not embedded.is_running():
        return
    client = redis.Redis(unix_socket_path=str(embedded.socket_path), socket_timeout=5)
    with contextlib.suppress(redis.ConnectionError):  # SHUTDOWN drops the connection: success
        client.shutdown(nosave=True)
    client.close()
