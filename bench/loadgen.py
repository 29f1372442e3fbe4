"""A small asyncio HTTP/1.1 keep-alive client, light enough to share 2 cores with the servers.

Why not requests/httpx: their per-request overhead would make the client the bottleneck.
Requests are encoded once up front; a response is read as a status line, headers (only
Content-Length matters) and exactly that many body bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 30.0  # above gunicorn's worker timeout: a stuck request shows as an error


def encode_post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    headers: dict[str, str],
    method: str = "POST",
) -> bytes:
    """One keep-alive POST (or PUT…, as `method` says), ready to write."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_form_post(
    host: str, port: int, path: str, form: dict[str, str], headers: dict[str, str]
) -> bytes:
    """A form-encoded POST, as Twilio sends its webhooks."""
    body = urlencode(form).encode("ascii")
    return encode_post(host, port, path, body, "application/x-www-form-urlencoded", headers)


class RequestFeed:
    """Hands out pre-encoded requests in order, cycling; the cursor survives across runs.

    Why a cursor: requests that use up server state (a reveal is allowed a few times per call)
    must not start again from the first one in every round.
    """

    def __init__(self, requests: Sequence[bytes]):
        if not requests:
            raise ValueError("a feed needs at least one request")
        self._requests = list(requests)
        self._cursor = 0

    def next(self) -> bytes:
        request = self._requests[self._cursor % len(self._requests)]
        self._cursor += 1
        return request

    @property
    def wrapped(self) -> int:
        """Requests handed out after the last one: repeats of earlier ones."""
        return max(0, self._cursor - len(self._requests))

    def answered(self, request: bytes, body: bytes) -> None:
        """The server's answer to a request this feed handed out (a feed that follows the
        server's answers, as Twilio follows a <Gather> action, builds its next request from
        it); not called when the request failed on the network."""


@dataclass
class Sample:
    """What one timed run saw; latencies in seconds, one per completed request."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    marked: int = 0  # responses whose body contains the run's marker
    spread: list[int] = field(default_factory=list)  # connections per server worker, if known

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class ProtocolError(Exception):
    """The server answered something this client does not read (no Content-Length…)."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one response."""
    head = await reader.readuntil(_HEADER_END)
    status = int(head[9:12])
    lowered = head.lower()
    start = lowered.find(_CONTENT_LENGTH)
    if start >= 0:
        end = lowered.index(b"\r\n", start + 2)
        length = int(lowered[start + len(_CONTENT_LENGTH) : end])
    elif status in (204, 304) or 100 <= status < 200:
        length = 0
    else:
        raise ProtocolError(f"HTTP {status} without Content-Length")
    body = await reader.readexactly(length) if length else b""
    return status, body, b"\r\nconnection: close" not in lowered


class Connection:
    """One keep-alive connection that reopens itself after the server closed it (shared with
    the soak's connection pool, bench/soak_calls.py)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.local_port = 0

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), _CONNECT_TIMEOUT
        )
        self.local_port = self._writer.get_extra_info("sockname")[1]

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            await self.open()
        assert self._reader is not None
        assert self._writer is not None
        try:
            self._writer.write(request)
            status, body, keep_alive = await asyncio.wait_for(
                _read_response(self._reader), _READ_TIMEOUT
            )
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# What a request may fail with short of a bug in this client.
NETWORK_ERRORS = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    TimeoutError,
    ProtocolError,
    ValueError,
)


# Who serves each connection: server worker id -> our local ports on it (every worker listed,
# [] when it serves none); {} when the server cannot tell.
ConnectionOwners = Callable[[Sequence[int]], dict[int, list[int]]]
# Connections reopened at most to even out the workers. Each open sends one request of the
# feed, so a run takes up to `connections + MAX_REOPENS` requests before its clock starts.
MAX_REOPENS = 64


async def _open_evenly(
    pool: list[Connection], feed: RequestFeed, owners: ConnectionOwners | None
) -> list[int]:
    """Open the pool one connection at a time (a burst of connects tends to land on one
    worker), then reopen connections of the busiest worker until the workers hold equal
    shares. Returns the connections per worker, [] when unknown."""
    for connection in pool:
        with contextlib.suppress(*NETWORK_ERRORS):
            request = feed.next()
            _, body = await connection.exchange(request)  # answered: accepted by some worker
            feed.answered(request, body)
    if owners is None:
        return []
    counts: dict[int, int] = {}
    for _ in range(MAX_REOPENS):
        spread = owners([connection.local_port for connection in pool])
        if not spread:
            return []
        counts = {worker: len(ports) for worker, ports in spread.items()}
        busiest = max(counts, key=counts.__getitem__)
        if counts[busiest] - min(counts.values()) <= 1 or not spread[busiest]:
            break
        moved = next(c for c in pool if c.local_port == spread[busiest][0])
        moved.close()
        with contextlib.suppress(*NETWORK_ERRORS):
            request = feed.next()
            _, body = await moved.exchange(request)  # reconnects; lands on a worker at random
            feed.answered(request, body)
    return sorted(counts.values(), reverse=True)


async def _measure(
    host: str,
    port: int,
    feed: RequestFeed,
    seconds: float,
    connections: int,
    marker: bytes | None,
    owners: ConnectionOwners | None,
) -> Sample:
    sample = Sample()
    pool = [Connection(host, port) for _ in range(connections)]
    # Connect first, so the clock measures requests rather than TCP handshakes or accepts.
    sample.spread = await _open_evenly(pool, feed, owners)
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds

    async def worker(connection: Connection) -> None:
        latencies, statuses = sample.latencies, sample.statuses
        while clock() < deadline:
            request = feed.next()
            sent = clock()
            try:
                status, body = await connection.exchange(request)
            except NETWORK_ERRORS:
                sample.connection_errors += 1
                await asyncio.sleep(0.01)  # a refused connect must not spin the loop
                continue
            latencies.append(clock() - sent)
            statuses[status] += 1
            feed.answered(request, body)
            if marker is not None and marker in body:
                sample.marked += 1

    try:
        await asyncio.gather(*(worker(connection) for connection in pool))
    finally:
        for connection in pool:
            connection.close()
    sample.seconds = clock() - started
    return sample


def measure(
    host: str,
    port: int,
    feed: RequestFeed,
    *,
    seconds: float,
    connections: int,
    marker: bytes | None = None,
    owners: ConnectionOwners | None = None,
) -> Sample:
    """Send `feed`'s requests for `seconds` over `connections` keep-alive connections, spread
    evenly over the server's workers when `owners` can tell who holds which."""
    return asyncio.run(_measure(host, port, feed, seconds, connections, marker, owners))


async def _fetch_all(
    host: str, port: int, requests: Sequence[bytes], connections: int
) -> list[Response]:
    results: list[Response | None] = [None] * len(requests)
    indexes = iter(range(len(requests)))

    async def worker() -> None:
        connection = Connection(host, port)
        try:
            for index in indexes:
                status, body = await connection.exchange(requests[index])
                results[index] = Response(status, body)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, len(requests))))))
    return [result for result in results if result is not None]


def fetch_all(
    host: str, port: int, requests: Sequence[bytes], *, connections: int
) -> list[Response]:
    """Send every request once, concurrently; the responses in the requests' order."""
    return asyncio.run(_fetch_all(host, port, requests, connections))


async def _wait_until_answering(host: str, port: int, request: bytes, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        connection = Connection(host, port)
        try:
            status, _ = await connection.exchange(request)
            return status
        except NETWORK_ERRORS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                connection.close()


def wait_until_answering(host: str, port: int, request: bytes, *, timeout: float) -> int:
    """Retry `request` until the server answers it; its status. Raises on timeout."""
    return asyncio.run(_wait_until_answering(host, port, request, timeout))
