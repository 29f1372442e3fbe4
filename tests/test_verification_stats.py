"""The dashboard's counters: what real verifications through the API add up to, kept in Redis
with an expiry, and never a reason for a verification to fail."""

from __future__ import annotations

import base64
import secrets

import pytest
import redis
from redis.cluster import RedisCluster

from ivr import keys
from ivr.verification.models import bucket_of
from ivr.verification.stats import RECENT_CAP, VerificationStats
from tests.conftest import Api, twilio_post, verification_key
from tests.console_helpers import make_user, sign_in


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


# -- every channel, every reason, through the API and Twilio's webhooks ------------------------

MISSED_CALL_NUMBER = "+14155550111"
FLASH_POOL = ("+14155550121", "+14155550132")
EVENTS_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# 2027-01-15 08:30 UTC: half past, so the 24 hours start inside an hour
HALF_PAST = 1_800_000_000_000 // HOUR_MS * HOUR_MS + 30 * MINUTE_MS


class Clock:
    """The stats' clock, moved by hand: bucket boundaries without sleeping."""

    def __init__(self, ms: int = HALF_PAST):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def counting(app, redis_client, clock: Clock | None = None) -> VerificationStats:
    """The app's verifications counted with a clock the test moves."""
    stats = VerificationStats(redis_client, clock_ms=clock or Clock())
    app.extensions["ivr"].verifications.stats = stats
    return stats


@pytest.fixture
def channels_app(make_app):
    return make_app(
        missed_call_numbers=MISSED_CALL_NUMBER,
        flash_call_accept_weak_odds=True,  # a test pool: a few numbers
        flash_call_numbers=",".join(FLASH_POOL),
        allowed_countries="US,GB",
    )


def sms_code(twilio_api) -> str:
    body = twilio_api.messages()[-1].value("Body")
    return next(word for word in body.replace(".", " ").split() if word.isdigit())


def started_ago(redis_client, sid: str, seconds: int) -> None:
    """Move a verification's start `seconds` into the past (Redis' clock times approvals)."""
    key = verification_key(redis_client, sid)
    created_at = int(redis_client.hget(key, "c"))
    redis_client.hset(key, "c", str(created_at - seconds * 1000))


def past_expiry(redis_client, sid: str) -> None:
    key = verification_key(redis_client, sid)
    seconds, _ = redis_client.time()
    redis_client.hset(key, "x", str(seconds * 1000 - 1000))


def status_callback(client, kind: str, sid: str, provider_sid: str, status: str):
    if kind == "sms":
        params = {"MessageSid": provider_sid, "MessageStatus": status}
        return twilio_post(client, f"/sms/status/{sid}", params)
    return twilio_post(
        client, f"/voice/status/{sid}", {"CallSid": provider_sid, "CallStatus": status}
    )


def ring(client, caller: str, called: str, verstat: str = "TN-Validation-Passed-A"):
    params = {
        "CallSid": "CA" + secrets.token_hex(16),
        "From": caller,
        "To": called,
        "CallStatus": "ringing",
        "StirVerstat": verstat,
    }
    return twilio_post(client, "/voice/missed-call", params)


def test_each_channel_counts_started_delivered_once_and_approved(
    channels_app, redis_client, twilio_api
):
    stats = counting(channels_app, redis_client)
    client = channels_app.test_client()
    api = Api(client)

    sms = api.start(to="+14155550171", channel="sms").get_json()
    message_sid = twilio_api.last_sid
    code = sms_code(twilio_api)
    assert stats.summary("24h").delivered == 0, "queued is not delivered"
    for status in ("sent", "delivered", "delivered"):  # Twilio repeats itself
        assert status_callback(client, "sms", sms["sid"], message_sid, status).status_code == 204
    api.start(to="+14155550171", channel="sms")  # a re-send: neither started nor delivered again
    status_callback(client, "sms", sms["sid"], twilio_api.last_sid, "delivered")
    assert api.check(code, sid=sms["sid"]).get_json()["valid"]

    call = api.start(to="+442071838750", channel="call").get_json()
    for status in ("initiated", "ringing", "in-progress", "in-progress", "completed"):
        status_callback(client, "call", call["sid"], twilio_api.last_sid, status)

    flash = api.start(to="+14155550172", channel="flash_call").get_json()
    status_callback(client, "call", flash["sid"], twilio_api.last_sid, "ringing")  # the code

    missed = api.start(to="+14155550173", channel="missed_call").get_json()
    ring(client, "+14155550173", missed["call_to"])

    summary = stats.summary("24h")
    assert (summary.started, summary.delivered, summary.approved) == (4, 3, 2)
    assert summary.by_channel["sms"] == {"started": 1, "delivered": 1, "approved": 1}
    assert summary.by_channel["call"] == {"started": 1, "delivered": 1}
    assert summary.by_channel["flash_call"] == {"started": 1, "delivered": 1}
    assert summary.by_channel["missed_call"] == {"started": 1, "approved": 1}
    assert summary.by_country["US"] == {"started": 3, "delivered": 2, "approved": 2}
    assert summary.by_country["GB"] == {"started": 1, "delivered": 1}
    assert summary.conversion == 0.5
    assert summary.failed == 0 and sum(summary.failures.values()) == 0
    assert summary.since_ms == HALF_PAST - 1439 * MINUTE_MS
    assert [point[1:] for point in summary.series[-1:]] == [(4, 3, 2)]


def test_an_unanswered_call_is_not_delivered(channels_app, redis_client, twilio_api):
    stats = counting(channels_app, redis_client)
    client = channels_app.test_client()
    call = Api(client).start(to="+14155550174", channel="call").get_json()
    for status in ("initiated", "ringing", "no-answer"):
        status_callback(client, "call", call["sid"], twilio_api.last_sid, status)
    assert stats.summary("24h").delivered == 0


def test_the_median_time_to_approval_comes_from_the_histogram(
    channels_app, redis_client, twilio_api
):
    stats = counting(channels_app, redis_client)
    client = channels_app.test_client()
    api = Api(client)
    assert stats.summary("24h").median_seconds_to_approval is None
    for to, seconds in (("+14155550181", 3), ("+14155550182", 8), ("+14155550183", 40)):
        sid = api.start(to=to, channel="sms").get_json()["sid"]
        started_ago(redis_client, sid, seconds)
        assert api.check(sms_code(twilio_api), sid=sid).get_json()["valid"]
    missed = api.start(to="+14155550184", channel="missed_call").get_json()
    started_ago(redis_client, missed["sid"], 100)
    ring(client, "+14155550184", missed["call_to"])
    # 3 s -> <= 5, 8 s -> <= 10, 40 s -> <= 45, 100 s -> <= 120: half are within 10 s
    assert stats.summary("24h").median_seconds_to_approval == 10.0
    assert stats.summary("7d").median_seconds_to_approval == 10.0


def test_failures_are_counted_with_their_reason_channel_and_country(
    make_app, redis_client, twilio_api
):
    app = make_app(
        missed_call_numbers=MISSED_CALL_NUMBER,
        allowed_countries="US",
        otp_max_attempts=2,
        send_limit_per_number="2/10m",
    )
    stats = counting(app, redis_client)
    client = app.test_client()
    api = Api(client)

    assert api.start(to="+19005550100", channel="sms").status_code == 400  # premium rate
    assert api.start(to="+442071838750", channel="call").status_code == 400  # not allowed: GB
    assert api.start(to="not a number", channel="sms").status_code == 400  # malformed: no count

    api.start(to="+14155550191", channel="sms")
    api.start(to="+14155550191", channel="sms")
    assert api.start(to="+14155550191", channel="sms").status_code == 429  # rate limited

    twilio_api.fail_next(status=400, body={"code": 21211, "message": "Invalid 'To'", "status": 400})
    assert api.start(to="+14155550192", channel="call").status_code >= 400  # carrier error

    wrong = api.start(to="+14155550193", channel="sms").get_json()
    bad = "111111" if sms_code(twilio_api) != "111111" else "222222"
    statuses = [api.check(bad, sid=wrong["sid"]).get_json()["status"] for _ in range(2)]
    assert statuses == ["pending", "max_attempts_reached"]

    late = api.start(to="+14155550194", channel="sms").get_json()
    late_code = sms_code(twilio_api)
    past_expiry(redis_client, late["sid"])
    assert api.check(late_code, sid=late["sid"]).status_code == 409  # found expired
    canceled = api.start(to="+14155550195", channel="sms").get_json()
    past_expiry(redis_client, canceled["sid"])
    api.post(f"/v1/verifications/{canceled['sid']}/cancel")  # ends it expired, not canceled

    missed = api.start(to="+14155550196", channel="missed_call").get_json()
    ring(client, "+14155550196", missed["call_to"], verstat="TN-Validation-Failed")

    summary = stats.summary("24h")
    assert dict(summary.failures) == {
        "number_refused": 2,
        "rate_limited": 1,
        "carrier_error": 1,
        "max_attempts": 1,
        "expired": 2,
        "caller_id_untrusted": 1,
    }
    assert summary.failed == 8
    assert summary.by_country["GB"] == {"failed": 1}
    assert summary.by_channel["call"] == {"started": 1, "failed": 2}
    assert summary.by_channel["missed_call"] == {"started": 1, "failed": 1}
    assert summary.started == 6 and summary.approved == 0 and summary.conversion == 0.0


def test_the_expiry_sweep_counts_what_nobody_checked(make_app, redis_client, twilio_api):
    app = make_app(events_webhook_url="http://127.0.0.1:9/", events_webhook_secret=EVENTS_SECRET)
    stats = counting(app, redis_client)
    sid = Api(app.test_client()).start(to="+14155550197", channel="sms").get_json()["sid"]
    past_expiry(redis_client, sid)
    redis_client.zadd(keys.expiries(bucket_of(sid)), {sid: 0})
    assert app.extensions["ivr"].verifications.expire_due() == 1
    assert stats.summary("24h").failures == {"expired": 1}


# -- buckets, windows, expiries -----------------------------------------------------------------


def test_the_24_hours_are_exact_to_the_minute_and_the_7_days_to_the_hour(redis_client):
    clock = Clock()
    stats = VerificationStats(redis_client, clock_ms=clock)
    stats.started("sms", "US")  # 08:30
    clock.ms += 24 * HOUR_MS - MINUTE_MS  # 08:29 the next day: still inside, by a minute
    summary = stats.summary("24h")
    assert summary.started == 1
    assert sum(point[1] for point in summary.series) == 0, "its hour is not one of the 24 points"
    clock.ms += MINUTE_MS  # 08:30: 24 hours later, out
    assert stats.summary("24h").started == 0
    week = stats.summary("7d")
    assert week.started == 1 and len(week.series) == 168
    assert week.series[-25] == (HALF_PAST - 30 * MINUTE_MS, 1, 0, 0)
    clock.ms += 6 * 24 * HOUR_MS  # a week after its hour: out of the 7 days too
    assert stats.summary("7d").started == 0


def _hgetall_calls(client: redis.Redis | RedisCluster) -> int:
    """HGETALLs the server has run (on a cluster, every master's, summed)."""
    if isinstance(client, RedisCluster):
        per_node = client.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values()
    else:
        per_node = [client.info("commandstats")]
    return sum(stats.get("cmdstat_hgetall", {}).get("calls", 0) for stats in per_node)


def test_a_period_reads_a_bounded_number_of_buckets(redis_client):
    # The embedded server (a unix socket) and the test cluster are the suite's alone.
    if isinstance(redis_client, redis.Redis) and (
        "path" not in redis_client.connection_pool.connection_kwargs
    ):
        pytest.skip("a shared server's command counts include other clients'")
    stats = VerificationStats(redis_client, clock_ms=Clock(HALF_PAST))
    # 24h: 24 hours and the oldest hour's last 30 minutes; 7d: 168 hours, never minutes
    for period, most in (("24h", 24 + 30), ("7d", 168)):
        before = _hgetall_calls(redis_client)
        stats.summary(period)
        assert 0 < _hgetall_calls(redis_client) - before <= most


def test_every_key_written_expires(channels_app, redis_client, twilio_api):
    stats = counting(channels_app, redis_client)
    api = Api(channels_app.test_client())
    sid = api.start(to="+14155550175", channel="sms").get_json()["sid"]
    api.check(sms_code(twilio_api), sid=sid)
    stats.failed("sms", "US", "carrier_error")
    written = [
        name
        for name in redis_client.scan_iter("ivr:*")
        if name.startswith(("ivr:{stats:m:", "ivr:{stats:h:"))
        or name == keys.recent_verifications()
    ]
    assert sorted(written) == sorted(
        [
            keys.stats_minute(HALF_PAST // MINUTE_MS),
            keys.stats_hour(HALF_PAST // HOUR_MS),
            keys.recent_verifications(),
        ]
    )
    day, week = 86400, 7 * 86400
    assert day < redis_client.ttl(keys.stats_minute(HALF_PAST // MINUTE_MS)) <= 25 * 3600
    assert week < redis_client.ttl(keys.stats_hour(HALF_PAST // HOUR_MS)) <= 8 * day
    assert week < redis_client.ttl(keys.recent_verifications()) <= 8 * day


def test_each_bucket_has_a_slot_of_its_own(redis_client):
    minute, hour = keys.stats_minute(1), keys.stats_hour(1)
    assert minute.count("{") == 1 and "{stats:m:1}" in minute
    assert keys.stats_minute(2) != minute and "{stats:h:1}" in hour


# -- the recent verifications -------------------------------------------------------------------


def test_recent_verifications_are_masked_filterable_and_skip_the_gone(
    channels_app, redis_client, twilio_api
):
    clock = Clock()
    stats = counting(channels_app, redis_client, clock)
    api = Api(channels_app.test_client())
    numbers = ("+14155550176", "+14155550177", "+14155550178")
    sids, codes = [], []
    for to in numbers:
        clock.ms += 1000
        sids.append(api.start(to=to, channel="sms").get_json()["sid"])
        codes.append(sms_code(twilio_api))
    api.check(codes[0], sid=sids[0])
    clock.ms += 1000
    missed = api.start(to="+14155550179", channel="missed_call").get_json()
    redis_client.delete(verification_key(redis_client, sids[2]))  # its record expired

    recent = stats.recent()
    assert [v.sid for v in recent] == [missed["sid"], sids[1], sids[0]], (
        "newest first, gone skipped"
    )
    assert [v.to for v in recent] == ["+1415555****"] * 3
    text = repr(recent)
    assert not any(number in text for number in numbers) and "+14155550179" not in text
    assert not any(code in text for code in codes)
    assert [v.sid for v in stats.recent(status="approved")] == [sids[0]]
    assert [v.sid for v in stats.recent(channel="missed_call")] == [missed["sid"]]
    assert [v.sid for v in stats.recent(status="pending", channel="sms")] == [sids[1]]
    assert len(stats.recent(limit=1)) == 1


def test_the_recent_index_is_capped(redis_client):
    clock = Clock()
    stats = VerificationStats(redis_client, clock_ms=clock)
    for n in range(RECENT_CAP + 5):
        clock.ms += 1
        stats.started("sms", "US", f"VE{n:032x}")
    assert redis_client.zcard(keys.recent_verifications()) == RECENT_CAP
    assert stats.recent_sids(1) == [f"VE{RECENT_CAP + 4:032x}"]
    assert stats.recent() == [], "none of them is a stored verification"


def test_the_console_page_and_csv_show_masked_numbers_and_no_code(
    channels_app, redis_client, twilio_api
):
    counting(channels_app, redis_client)
    api = Api(channels_app.test_client())
    sid = api.start(to="+14155550186", channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    make_user(channels_app, "watcher", "viewer")
    console = sign_in(channels_app, "watcher")
    for path in ("/console/verifications", "/console/verifications.csv?status=pending"):
        page = console.get(path)
        assert page.status_code == 200
        assert sid in page.text and "+1415555****" in page.text
        assert "+14155550186" not in page.text and code not in page.text


# -- counting never fails a verification --------------------------------------------------------


def test_a_redis_error_while_counting_fails_no_verification_through_the_api(
    channels_app, redis_client, twilio_api, caplog
):
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    channels_app.extensions["ivr"].verifications.stats = VerificationStats(unreachable)
    api = Api(channels_app.test_client())
    started = api.start(to="+14155550187", channel="sms")
    assert started.status_code == 201
    assert api.check(sms_code(twilio_api), sid=started.get_json()["sid"]).get_json()["valid"]
    assert api.start(to="+19005550100", channel="sms").status_code == 400  # refused, as ever
    assert "not counted" in caplog.text


def test_a_bucket_of_the_wrong_type_fails_no_verification(channels_app, redis_client, twilio_api):
    clock = Clock()
    stats = counting(channels_app, redis_client, clock)
    redis_client.set(keys.stats_minute(clock.ms // MINUTE_MS), "not a hash")  # WRONGTYPE
    client = channels_app.test_client()
    api = Api(client)
    sms = api.start(to="+14155550188", channel="sms")
    assert sms.status_code == 201
    assert api.check(sms_code(twilio_api), sid=sms.get_json()["sid"]).get_json()["valid"]
    missed = api.start(to="+14155550189", channel="missed_call").get_json()
    ring(client, "+14155550189", missed["call_to"])
    assert api.get(f"/v1/verifications/{missed['sid']}").get_json()["status"] == "approved"
    # One round trip, not a transaction: the hour buckets still counted what the minute missed.
    assert (stats.summary("7d").started, stats.summary("7d").approved) == (2, 2)
