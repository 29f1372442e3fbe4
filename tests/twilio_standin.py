"""A local HTTP server standing in for Twilio's REST API: it records what Twilio would receive
and answers like Twilio, or fails on demand (5xx, slow answers, 4xx error bodies)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class RecordedRequest:
    method: str
    path: str
    form: dict[str, list[str]]
    raw_body: str
    username: str | None

    def value(self, name: str) -> str:
        return self.form[name][0]


@dataclass
class Failure:
    status: int = 503
    delay: float = 0.0
    body: dict = field(default_factory=dict)


class TwilioStandIn:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.created_sids: list[str] = []  # what each successful create answered, in order
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._released = threading.Event()  # cleared by hold(): requests wait for release()
        self._released.set()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                standin._record(self, raw)
                standin._released.wait(timeout=30)
                standin._answer(self)

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> TwilioStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        self._released.set()
        with self._lock:
            self.requests.clear()
            self.created_sids.clear()
            self._failures.clear()

    def hold(self) -> None:
        """Requests are recorded, then left unanswered until release() (a send in flight)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def fail_next(
        self, times: int = 1, status: int = 503, delay: float = 0.0, body: dict | None = None
    ) -> None:
        """The next `times` requests answer `status` (after `delay` seconds)."""
        with self._lock:
            self._failures += [Failure(status, delay, body or {}) for _ in range(times)]

    @property
    def last_sid(self) -> str:
        return self.created_sids[-1]

    def calls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/Calls.json")]

    def messages(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/Messages.json")]

    def _record(self, handler: BaseHTTPRequestHandler, raw: str) -> None:
        import base64

        username = None
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            username = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        with self._lock:
            self.requests.append(
                RecordedRequest("POST", handler.path, parse_qs(raw), raw, username)
            )

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure:
            time.sleep(failure.delay)
            body = failure.body or {
                "code": 20500,
                "message": "Internal Server Error",
                "status": failure.status,
            }
            return self._send(handler, failure.status, body)
        kind = {"/Calls.json": "CA", "/Messages.json": "SM"}
        prefix = next((p for end, p in kind.items() if handler.path.endswith(end)), None)
        if prefix:
            sid = prefix + secrets.token_hex(16)
            with self._lock:
                self.created_sids.append(sid)
            return self._send(handler, 201, {"sid": sid, "status": "queued"})
        return self._send(handler, 404, {"code": 20404, "message": "Not found", "status": 404})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (timeout tests)
