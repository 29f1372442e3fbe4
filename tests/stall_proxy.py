"""A TCP proxy in front of the test Redis that can hold a reply back past the client's socket
timeout: Redis has run the command, the client sees a timeout (a stall, a network cut, a
failover at the wrong moment), and must not claim to know what happened."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import parse_qs, urlsplit


class SlowRedisProxy:
    """Forwards to `target_url` (redis:// or unix://). `delay_next_reply` holds back the next
    reply of any connection; `delay_reply_to(marker, seconds)` the reply to the next request
    that holds `marker` (a key's name, say), on its own connection."""

    def __init__(self, target_url: str):
        self.target = urlsplit(target_url)
        self.delay_next_reply = 0.0
        self._marker: tuple[bytes, float] | None = None
        self.delayed = threading.Event()  # set once a reply was held back
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def delay_reply_to(self, marker: bytes, seconds: float) -> None:
        self.delayed.clear()
        self._marker = (marker, seconds)

    async def _open_target(self):
        if self.target.scheme == "unix":
            return await asyncio.open_unix_connection(self.target.path)
        return await asyncio.open_connection(self.target.hostname, self.target.port or 6379)

    async def _handle(self, client_reader, client_writer):
        server_reader, server_writer = await self._open_target()
        held = {"seconds": 0.0}  # this connection's next reply, held back that long
        await asyncio.gather(
            self._requests(client_reader, server_writer, held),
            self._replies(server_reader, client_writer, held),
        )

    async def _requests(self, reader, writer, held):
        try:
            while data := await reader.read(65536):
                if self._marker is not None and self._marker[0] in data:
                    held["seconds"], self._marker = self._marker[1], None
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _replies(self, reader, writer, held):
        try:
            while data := await reader.read(65536):
                delay = held["seconds"] or self.delay_next_reply
                if delay:
                    held["seconds"] = self.delay_next_reply = 0.0
                    self.delayed.set()
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def url(self, db: int | None = None) -> str:
        """The proxy's URL, for `db` (the target's own DB when None)."""
        if db is None:
            if self.target.scheme == "unix":
                db = int(parse_qs(self.target.query).get("db", ["0"])[0])
            else:
                db = int(self.target.path.strip("/") or 0)
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
