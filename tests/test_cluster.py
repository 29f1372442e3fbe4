"""Redis Cluster: the URL's seeds, and the app on a real cluster started on loopback."""

from __future__ import annotations

import pytest

from ivr.config import ConfigError, load_settings
from ivr.store import cluster_seeds


def test_cluster_seeds_and_credentials_come_from_the_url():
    nodes, credentials = cluster_seeds("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001)]
    assert credentials == {"username": "app", "password": "p@ss"}
    assert cluster_seeds("rediss+cluster://r1:6379") == ([("r1", 6379)], {})


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://", "redis+cluster://host", "redis+cluster://h:1,", "redis+cluster://h:0"],
)
def test_a_cluster_url_without_host_and_port_is_refused_at_start(url):
    with pytest.raises(ConfigError, match=r"REDIS_URL.*host:port"):
        load_settings({"REDIS_URL": url})


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://app:hunter22@h:1,",
        "redis+cluster://app:hunter22@h:port",
        "redis://:hunter22@h:1 x",
    ],
)
def test_a_malformed_url_is_described_without_its_password(url):
    """The password is masked by text, not by parsing: a bad port used to raise ValueError
    from the redaction itself, a traceback instead of the one-line refusal."""
    with pytest.raises(ConfigError) as refused:
        load_settings({"REDIS_URL": url})
    assert "REDIS_URL" in str(refused.value) and "hunter22" not in str(refused.value)


def test_healthz_says_it_is_a_cluster_and_how_many_masters_answer(make_app, redis_url):
    if not redis_url.startswith("redis+cluster://"):
        pytest.skip("on a cluster only")
    health = make_app().test_client().get("/healthz").get_json()
    assert health["store"]["backend"] == "cluster"
    assert (health["store"]["masters"], health["store"]["masters_answering"]) == (3, 3)
    assert health["store"]["maxmemory_policy"] == "noeviction"
