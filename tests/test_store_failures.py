"""When Redis is slow or gone, nothing is done twice and nothing is half done."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import Api

TO = "+14155550123"


class SlowRedisProxy:
    """A TCP proxy in front of the test Redis that can hold back one reply past the client's
    socket timeout: the server has run the command, the client sees a timeout."""

    def __init__(self, target_url: str):
        self.target = urlsplit(target_url)
        self.delay_next_reply = 0.0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _open_target(self):
        if self.target.scheme == "unix":
            return await asyncio.open_unix_connection(self.target.path)
        return await asyncio.open_connection(self.target.hostname, self.target.port or 6379)

    async def _handle(self, client_reader, client_writer):
        server_reader, server_writer = await self._open_target()
        await asyncio.gather(
            self._pipe(client_reader, server_writer, False),
            self._pipe(server_reader, client_writer, True),
        )

    async def _pipe(self, reader, writer, replies):
        try:
            while data := await reader.read(65536):
                if replies and self.delay_next_reply:
                    delay, self.delay_next_reply = self.delay_next_reply, 0.0
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def url(self, db: int) -> str:
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


@pytest.fixture
def slow_redis(redis_url, redis_client) -> Iterator[tuple[SlowRedisProxy, int]]:
    proxy = SlowRedisProxy(redis_url)
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    yield proxy, int(db)
    proxy.close()


def test_a_check_whose_reply_times_out_is_not_run_twice(make_app, twilio_api, slow_redis):
    proxy, db = slow_redis
    api = Api(make_app(redis_url=proxy.url(db)).test_client())
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    body = twilio_api.messages()[-1].value("Body")
    code = next(word for word in body.replace(".", " ").split() if word.isdigit())
    wrong = "1" * 6 if code != "1" * 6 else "2" * 6
    assert api.check(wrong, sid=sid).status_code == 200  # the check script is now loaded

    proxy.delay_next_reply = 2.5  # past the client's 2 s socket timeout
    response = api.check(wrong, sid=sid)
    assert response.status_code == 503
    assert response.get_json()["type"] == "urn:ivr:problem:store_unavailable"
    assert api.get(f"/v1/verifications/{sid}").get_json()["check_attempts"] == 2

    assert api.check(code, sid=sid).get_json()["valid"] is True
