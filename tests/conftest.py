"""Fixtures: a real Redis (embedded always; a server too when TEST_REDIS_URL or REDIS_URL names
one), a local stand-in for Twilio's REST API, and apps built per test by the real factory."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import ClusterNode, RedisCluster
from twilio.request_validator import RequestValidator

from ivr import create_app
from ivr.config import Settings
from ivr.store import EmbeddedRedis, cluster_seeds
from tests.redis_cluster import LocalCluster
from tests.twilio_standin import TwilioStandIn

# Read before the env-clearing fixture runs: which Redis server the suite may use, and whether
# it also starts a Redis Cluster of its own (on unless TEST_REDIS_CLUSTER=0).
# TEST_REDIS_BACKENDS=cluster (or a comma-separated list) runs the suite on those alone.
SERVER_REDIS_URL = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
WITH_CLUSTER = os.environ.get("TEST_REDIS_CLUSTER", "1") != "0"
BACKENDS = [
    backend
    for backend, available in [
        ("embedded", True),
        ("server", bool(SERVER_REDIS_URL)),
        ("cluster", WITH_CLUSTER or "cluster" in os.environ.get("TEST_REDIS_BACKENDS", "")),
    ]
    if available
    and backend in (os.environ.get("TEST_REDIS_BACKENDS") or "embedded,server,cluster").split(",")
]

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
API_TOKEN = "test-api-token-0123456789"
PUBLIC_BASE_URL = "https://ivr.example.test"
CALLER_ID = "+14155550100"
SECRET_KEY = "test-secret-key-" + "x" * 32
ENV_NAMES = [name.upper() for name in Settings.model_fields] + ["INSTANCE_PATH"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the developer's shell."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session", params=BACKENDS)
def redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "embedded":
        embedded = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
        yield embedded.ensure_running()
        embedded.stop(force=True)
        return
    if request.param == "cluster":
        cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
        yield cluster.url
        cluster.stop()
        return
    assert SERVER_REDIS_URL
    client = redis.Redis.from_url(SERVER_REDIS_URL)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    if int(db) == 0:
        pytest.exit("TEST_REDIS_URL must name a dedicated DB index (not 0): tests flush it")
    yield SERVER_REDIS_URL


def plain_client(url: str, **options: Any) -> redis.Redis | RedisCluster:
    """A client of the tests' own for `url` (a cluster's too), not the app's timed one: what
    the tests send is never counted in the app's metrics."""
    if url.startswith("redis+cluster://"):
        nodes, _credentials = cluster_seeds(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options)
    return redis.Redis.from_url(url, **options)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = plain_client(redis_url, decode_responses=True)
    client.flushdb()  # on a cluster: every master (the replicas follow)
    yield client
    client.close()


@pytest.fixture(scope="session")
def _standin() -> Iterator[TwilioStandIn]:
    server = TwilioStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def twilio_api(_standin: TwilioStandIn) -> TwilioStandIn:
    _standin.reset()
    return _standin


@pytest.fixture
def make_app(
    redis_url: str, redis_client: redis.Redis, twilio_api: TwilioStandIn, tmp_path: Any
) -> Callable[..., Flask]:
    """Build an app with a Twilio account pointed at the stand-in; keyword args override."""
    return lambda **overrides: build_app(redis_url, twilio_api, tmp_path, **overrides)


def build_app(store_url: str, twilio_api: TwilioStandIn, tmp_path: Any, **overrides: Any) -> Flask:
    """The app as make_app builds it, on any Redis (a test's own cluster, say); a redis_url
    among `overrides` wins."""
    config: dict[str, Any] = {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "REDIS_URL": store_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_CALLER_ID": CALLER_ID,
        "TWILIO_API_BASE_URL": twilio_api.url,
        "TWILIO_HTTP_TIMEOUT": 2,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "SECRET_KEY": SECRET_KEY,
        "IVR_API_TOKEN": API_TOKEN,
        "APP_NAME": "Acme",
    }
    config.update({k.upper(): v for k, v in overrides.items()})
    app = create_app({k: v for k, v in config.items() if v is not None})
    app.testing = True
    return app


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def simulated_app(make_app: Callable[..., Flask]) -> Flask:
    """No Twilio account: the simulated carrier, webhooks signed with the dev token."""
    return make_app(
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Api:
    """The API as a client app uses it: bearer token, JSON bodies."""

    def __init__(self, client: FlaskClient, token: str = API_TOKEN):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.client.post(path, json=json, headers=self.headers, **kwargs)

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.client.put(path, json=json, headers=self.headers, **kwargs)

    def delete(self, path: str) -> Any:
        return self.client.delete(path, headers=self.headers)

    def start(self, to: str = "+14155550123", channel: str = "call", **fields: Any) -> Any:
        return self.post("/v1/verifications", {"to": to, "channel": channel, **fields})

    def check(self, code: str, **lookup: Any) -> Any:
        return self.post("/v1/verifications/check", {"code": code, **lookup})


@pytest.fixture
def api(client: FlaskClient) -> Api:
    return Api(client)


def twilio_post(
    client: FlaskClient,
    url: str,
    params: dict[str, str],
    token: str = AUTH_TOKEN,
    signature: str | None = None,
) -> Any:
    """POST a webhook signed exactly as Twilio signs it (RequestValidator)."""
    parts = urlsplit(url if "://" in url else PUBLIC_BASE_URL + url)
    absolute = f"{parts.scheme}://{parts.netloc}{parts.path}" + (
        f"?{parts.query}" if parts.query else ""
    )
    if signature is None:
        signature = RequestValidator(token).compute_signature(absolute, params)
    return client.post(
        parts.path + (f"?{parts.query}" if parts.query else ""),
        data=params,
        base_url=f"{parts.scheme}://{parts.netloc}",
        headers={"X-Twilio-Signature": signature},
    )


def twiml(response: Any) -> ET.Element:
    """Parse a webhook's TwiML; fails the test if it is not a <Response> document."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    root = ET.fromstring(response.get_data(as_text=True))
    assert root.tag == "Response"
    return root


def spoken(root: ET.Element) -> str:
    """All words of all <Say> verbs in a TwiML document, in order."""
    return " ".join(" ".join(say.itertext()) for say in root.iter("Say"))


def verification_key(client: Any, sid: str) -> str:
    """The Redis key holding verification `sid` now: its pending key while pending, else the
    ended record (see ivr.verification.store)."""
    from ivr.verification.store import VerificationStore

    _bucket, pending, ended = VerificationStore._keys_of(sid)
    return pending if client.hget(pending, "sid") == sid else ended
