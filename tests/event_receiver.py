"""A local HTTP server playing the app's events webhook endpoint: it records every request
and answers what the test scripted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Answer:
    status: int = 204
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """The app's webhook endpoint: records every request and answers what the test scripted
    (204 once the script runs out). `on_request(n)` runs in the server thread before the n-th
    request (0-based) is answered, so a test can act while a POST is in flight."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.on_request: Callable[[int], None] | None = None
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def do_GET(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ivr"

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self._answers += answers

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            index = len(self.requests)
            self.requests.append(Received(handler.command, handler.path, headers, body))
            answer = self._answers.pop(0) if self._answers else Answer()
        if self.on_request:
            self.on_request(index)
        time.sleep(answer.delay)
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the dispatcher stopped waiting (timeout test)
