"""When Redis is slow or gone, nothing is done twice and nothing is half done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Api
from tests.stall_proxy import SlowRedisProxy

TO = "+14155550123"


@pytest.fixture
def slow_redis(redis_url, redis_client) -> Iterator[tuple[SlowRedisProxy, int]]:
    if redis_url.startswith("redis+cluster://"):
        pytest.skip("the proxy stands in front of one server")
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
