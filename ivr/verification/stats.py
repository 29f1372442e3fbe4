"""Verification counters for the console's dashboard, in Redis so every host shows the same.

Each event is counted in a per-minute hash (kept 25 hours) and a per-hour hash (kept 8 days),
in one pipelined round trip; fields name what happened, by channel and by country
(`started|call|US`), failures by reason (`failed|expired`), and approval times in buckets for
the median. Keys are tagged per bucket, so the counters spread over cluster slots. Counting
never fails a verification: a Redis error here is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from ivr import keys

log = logging.getLogger(__name__)

MINUTE_TTL_SECONDS = 25 * 3600
HOUR_TTL_SECONDS = 8 * 86400
RECENT_CAP = 2000
# Upper bounds (seconds) of the approval-time buckets; the last catches everything slower.
APPROVAL_BUCKETS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 3600)
PERIODS = {"24h": 24, "7d": 7 * 24}  # hours
FAILURE_REASONS = (
    "expired",
    "max_attempts",
    "number_refused",
    "rate_limited",
    "carrier_error",
    "caller_id_untrusted",
)


@dataclass
class StatsSummary:
    """What the dashboard shows for a period."""

    period: str
    started: int = 0
    delivered: int = 0
    approved: int = 0
    by_channel: dict[str, Counter[str]] = field(default_factory=dict)  # channel -> event counts
    by_country: dict[str, Counter[str]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    median_seconds_to_approval: float | None = None
    # (hour start ms, started, delivered, approved), oldest first
    series: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def conversion(self) -> float | None:
        return self.approved / self.started if self.started else None


class VerificationStats:
    def __init__(self, client: redis.Redis, clock_ms: Callable[[], int] | None = None):
        self.redis = client
        self._clock = clock_ms or (lambda: int(time.time() * 1000))

    # -- counting ------------------------------------------------------------------------------

    def started(self, channel: str, country: str, sid: str) -> None:
        self._count([f"started|{channel}|{country}"], recent=sid)

    def delivered(self, channel: str, country: str) -> None:
        self._count([f"delivered|{channel}|{country}"])

    def approved(self, channel: str, country: str, seconds: float) -> None:
        bucket = next((b for b in APPROVAL_BUCKETS if seconds <= b), APPROVAL_BUCKETS[-1])
        self._count([f"approved|{channel}|{country}", f"approval_s|{bucket}"])

    def failed(self, channel: str, country: str, reason: str) -> None:
        self._count([f"failed|{reason}", f"failed_by|{channel}|{country}"])

    def _count(self, fields: list[str], recent: str | None = None) -> None:
        now = self._clock()
        minute, hour = now // 60_000, now // 3_600_000
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, ttl in (
                (keys.stats_minute(minute), MINUTE_TTL_SECONDS),
                (keys.stats_hour(hour), HOUR_TTL_SECONDS),
            ):
                for name in fields:
                    pipe.hincrby(key, name, 1)
                pipe.expire(key, ttl)
            if recent:
                pipe.zadd(keys.recent_verifications(), {recent: now})
                pipe.zremrangebyrank(keys.recent_verifications(), 0, -RECENT_CAP - 1)
                pipe.expire(keys.recent_verifications(), HOUR_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("stats: not counted (%s)", type(exc).__name__)

    # -- reading -------------------------------------------------------------------------------

    def summary(self, period: str = "24h") -> StatsSummary:
        hours = PERIODS[period]
        now_hour = self._clock() // 3_600_000
        first = now_hour - hours + 1
        pipe = self.redis.pipeline(transaction=False)
        for hour in range(first, now_hour + 1):
            pipe.hgetall(keys.stats_hour(hour))
        summary = StatsSummary(period)
        approval: Counter[int] = Counter()
        for hour, counts in zip(range(first, now_hour + 1), pipe.execute(), strict=True):
            point = [0, 0, 0]
            for name, raw in counts.items():
                value = int(raw)
                kind, _, rest = name.partition("|")
                if kind in ("started", "delivered", "approved"):
                    channel, _, country = rest.partition("|")
                    summary.by_channel.setdefault(channel, Counter())[kind] += value
                    summary.by_country.setdefault(country, Counter())[kind] += value
                    point[("started", "delivered", "approved").index(kind)] += value
                elif kind == "failed":
                    summary.failures[rest] += value
                elif kind == "failed_by":
                    channel, _, country = rest.partition("|")
                    summary.by_channel.setdefault(channel, Counter())["failed"] += value
                    summary.by_country.setdefault(country, Counter())["failed"] += value
                elif kind == "approval_s":
                    approval[int(rest)] += value
            summary.started += point[0]
            summary.delivered += point[1]
            summary.approved += point[2]
            summary.series.append((hour * 3_600_000, *point))
        summary.median_seconds_to_approval = _median(approval)
        return summary

    def recent_sids(self, limit: int = 200) -> list[str]:
        return list(self.redis.zrevrange(keys.recent_verifications(), 0, limit - 1))


def _median(buckets: Counter[int]) -> float | None:
    """The median approval time, as the upper bound of the bucket it falls in."""
    total = sum(buckets.values())
    if not total:
        return None
    seen = 0
    for bound in sorted(buckets):
        seen += buckets[bound]
        if seen * 2 >= total:
            return float(bound)
    return float(max(buckets))
