"""The dashboard's counters: what real verifications through the API add up to, kept in Redis
with an expiry, and never a reason for a verification to fail."""

from __future__ import annotations

import pytest
import redis

from ivr.verification.stats import VerificationStats
from tests.conftest import Api


@pytest.fixture
def stats(app) -> VerificationStats:
    return app.extensions["ivr"].verifications.stats


def sent_code(simulated_app, to: str) -> str:
    outbox = simulated_app.extensions["ivr"].carrier.outbox()
    body = next(entry["body"] for entry in outbox if entry["to"] == to)
    return next(word for word in body.replace(".", " ").split() if word.isdigit())


def test_started_delivered_and_approved_are_counted_by_channel_and_country(simulated_app):
    api = Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)
    assert api.start("+14155550161", "sms").status_code == 201
    assert api.start("+14155550162", "sms").status_code == 201
    assert api.check(sent_code(simulated_app, "+14155550161"), to="+14155550161").json["valid"]
    summary = simulated_app.extensions["ivr"].verifications.stats.summary("24h")
    assert (summary.started, summary.delivered, summary.approved) == (2, 2, 1)
    assert summary.by_channel["sms"]["approved"] == 1
    assert summary.by_country["US"]["started"] == 2
    assert summary.conversion == 0.5
    assert summary.median_seconds_to_approval == 5.0
    assert sum(point[1] for point in summary.series) == 2
    assert len(summary.series) == 24


def test_failures_are_counted_by_reason(simulated_app):
    api = Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)
    assert api.start("+19005550100", "sms").status_code == 400  # premium rate: refused
    for _ in range(5):
        api.start("+14155550163", "sms")
    assert api.start("+14155550163", "sms").status_code == 429
    api.start("+14155550164", "sms")
    for _ in range(5):
        api.check("000000", to="+14155550164")
    failures = simulated_app.extensions["ivr"].verifications.stats.summary("7d").failures
    assert failures["number_refused"] == 1
    assert failures["rate_limited"] == 1
    assert failures["max_attempts"] == 1


def test_every_counter_key_expires(simulated_app, redis_client):
    api = Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)
    api.start("+14155550165", "sms")
    names = [k for k in redis_client.scan_iter("ivr:{stats:*") if "verifications" in k]
    names.append("ivr:{recent}:verifications")
    assert len(names) == 3
    for name in names:
        assert redis_client.ttl(name) > 0, name


def test_the_recent_list_names_no_code(simulated_app):
    api = Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)
    api.start("+14155550166", "sms")
    code = sent_code(simulated_app, "+14155550166")
    stats = simulated_app.extensions["ivr"].verifications.stats
    assert len(stats.recent_sids()) == 1
    assert code not in str(stats.summary("24h"))


def test_a_redis_error_while_counting_fails_no_verification():
    stats = VerificationStats(redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2))
    stats.started("sms", "US", "VE" + "0" * 32)  # logged and dropped, not raised
    stats.approved("sms", "US", 3.0)


def test_buckets_follow_the_clock(redis_client):
    now = [1_800_000_000_000]
    stats = VerificationStats(redis_client, clock_ms=lambda: now[0])
    stats.started("call", "US", "VE" + "1" * 32)
    now[0] += 25 * 3_600_000  # a day later: outside the 24 hours, inside the 7 days
    stats.started("call", "US", "VE" + "2" * 32)
    assert stats.summary("24h").started == 1
    assert stats.summary("7d").started == 2
