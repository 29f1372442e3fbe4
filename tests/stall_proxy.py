"""A TCP proxy in front of a Redis server that can lose the answer to a script: the script
runs in Redis, but the app never hears back (a stall, a network cut, a failover at the wrong
moment). Its client times out, and must not claim to know what happened."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit


class StallProxy:
    """Listens on loopback and forwards to `upstream` (a redis:// or unix:// URL). While
    armed (`lose_next_script_answer`), the first connection that sends a script (EVALSHA or
    EVAL) whose request holds `containing` gets nothing back from then on; later connections
    are served normally."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        if parts.scheme == "unix":
            self._family, self._address = socket.AF_UNIX, parts.path
            self._db = dict(
                pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair
            ).get("db", "0")
        else:
            self._family, self._address = socket.AF_INET, (parts.hostname, parts.port or 6379)
            self._db = parts.path.strip("/") or "0"
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._armed = threading.Event()
        self._containing = b""
        self.lost = threading.Event()  # set once an answer was swallowed
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._listener.getsockname()[1]}/{self._db}"

    def lose_next_script_answer(self, containing: bytes = b"") -> None:
        self.lost.clear()
        self._containing = containing
        self._armed.set()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(self._family, socket.SOCK_STREAM)
            upstream.connect(self._address)
            self._sockets += [client, upstream]
            silenced = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, silenced), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client, silenced), daemon=True
            ).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, silenced: threading.Event):
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                script = b"EVALSHA" in data.upper() or b"\r\nEVAL\r\n" in data.upper()
                if self._armed.is_set() and script and self._containing in data:
                    self._armed.clear()
                    silenced.set()  # from this command on, this connection hears nothing
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.close()

    def _answers(self, upstream: socket.socket, client: socket.socket, silenced: threading.Event):
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if silenced.is_set():
                    self.lost.set()
                    continue
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.close()
