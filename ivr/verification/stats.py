"""Verification counters for the console's dashboard, in Redis so every host shows the same.

Each event is counted in a per-minute hash (kept 25 hours) and a per-hour hash (kept 8 days),
in one pipelined round trip; fields name what happened, by channel and by country
(`started|call|US`), failures by reason (`failed|expired`), and approval times in buckets for
the median. Keys are tagged per bucket, so the counters spread over cluster slots. Counting
never fails a verification: a Redis error here is logged and dropped.

Each event is counted in this process's Prometheus counters too (ivr.metrics: no Redis).

Events are counted when they happen (a verification started at 23:59 and approved at 00:01
counts in both hours), so "failures" are events too: a rate-limited or refused request never
started a verification, and a pending one may see a carrier error, then be approved.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import redis

from ivr import keys, phone
from ivr.metrics import metrics
from ivr.store import RedisClient
from ivr.verification.models import Channel, Status, Verification, is_sid
from ivr.verification.store import VerificationStore

log = logging.getLogger(__name__)

MINUTE_TTL_SECONDS = 25 * 3600
HOUR_TTL_SECONDS = 8 * 86400
RECENT_CAP = 2000
# Upper bounds (seconds) of the approval-time buckets; the last catches everything slower
# (no code lives longer than an hour: OTP_TTL_SECONDS and the call channels' TTLs are <= 3600).
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
    since_ms: int = 0  # the window's start; it ends now
    started: int = 0
    delivered: int = 0
    approved: int = 0
    failed: int = 0  # every failure, whatever its reason
    by_channel: dict[str, Counter[str]] = field(default_factory=dict)  # channel -> event counts
    by_country: dict[str, Counter[str]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    median_seconds_to_approval: float | None = None
    # (hour start ms, started, delivered, approved), oldest first
    series: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def conversion(self) -> float | None:
        """Approved / started; None when nothing started."""
        return self.approved / self.started if self.started else None


class VerificationStats:
    """Counts what becomes of verifications, per minute and per hour; reads them back."""

    def __init__(self, client: RedisClient, clock_ms: Callable[[], int] | None = None):
        self.redis = client
        self.store = VerificationStore(client)  # what recent() reads the verifications through
        self._clock = clock_ms or (lambda: int(time.time() * 1000))

    # -- counting ------------------------------------------------------------------------------

    def started(self, channel: str, country: str, sid: str | None = None) -> None:
        """A new verification (not a re-send); with its `sid`, it joins the recent ones."""
        metrics().verifications_started.labels(channel).inc()
        self._count([f"started|{channel}|{country}"], recent=sid)

    def delivered(self, channel: str, country: str) -> None:
        """The carrier delivered a verification's code (count each verification once)."""
        metrics().verifications_delivered.labels(channel).inc()
        self._count([f"delivered|{channel}|{country}"])

    def approved(self, channel: str, country: str, seconds_to_approve: float) -> None:
        """A verification approved, `seconds_to_approve` after it started."""
        metrics().verifications_approved.labels(channel).inc()
        bucket = next(
            (b for b in APPROVAL_BUCKETS if seconds_to_approve <= b), APPROVAL_BUCKETS[-1]
        )
        self._count([f"approved|{channel}|{country}", f"approval_s|{bucket}"])

    def failed(self, channel: str, country: str, reason: str) -> None:
        """Something went wrong, for one of FAILURE_REASONS."""
        metrics().verifications_failed.labels(channel, reason).inc()
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
        """The counts of the last 24 hours or 7 days (PERIODS), in one pipelined round trip.

        24h: exactly the last 1,440 minutes: the hour buckets of the current hour and the 23
        before it (the series, a point per hour), and the minute buckets of the part of the hour
        before them still inside the window (counted in the totals, not in the series). 7d: the
        current hour and the 167 before it, 168 hour buckets (the series, a point per hour; the
        console sums them into days).
        """
        hours = PERIODS[period]
        now = self._clock()
        now_hour = now // 3_600_000
        first = now_hour - hours + 1
        since_minute = now // 60_000 - 1439
        head = range(since_minute, first * 60) if period == "24h" else range(0)
        pipe = self.redis.pipeline(transaction=False)
        for hour in range(first, now_hour + 1):
            pipe.hgetall(keys.stats_hour(hour))
        for minute in head:
            pipe.hgetall(keys.stats_minute(minute))
        replies = pipe.execute()
        since_ms = since_minute * 60_000 if period == "24h" else first * 3_600_000
        summary = StatsSummary(period, since_ms=since_ms)
        approval: Counter[int] = Counter()
        for hour, counts in zip(range(first, now_hour + 1), replies[:hours], strict=True):
            summary.series.append((hour * 3_600_000, *_fold(summary, approval, counts)))
        for counts in replies[hours:]:
            _fold(summary, approval, counts)
        summary.median_seconds_to_approval = _median(approval)
        return summary

    def recent_sids(self, limit: int = 200) -> list[str]:
        """The sids of the newest verifications, newest first (some may be gone)."""
        return list(self.redis.zrevrange(keys.recent_verifications(), 0, limit - 1))

    def recent(
        self, limit: int = 100, status: str | None = None, channel: str | None = None
    ) -> list[Verification]:
        """The newest verifications still readable, newest first, of that status and channel
        when given; for display: `to` is masked (phone.masked), and a Verification never holds
        its code. Reads through the store a page at a time (at most RECENT_CAP sids)."""
        wanted_status = Status(status) if status else None
        wanted_channel = Channel(channel) if channel else None
        found: list[Verification] = []
        page = max(limit, 100)
        for offset in range(0, RECENT_CAP, page):
            sids = self.redis.zrevrange(keys.recent_verifications(), offset, offset + page - 1)
            sids = [sid for sid in sids if is_sid(sid)]
            for verification in self.store.get_many(sids) if sids else []:
                if verification is None:  # its record expired
                    continue
                if wanted_status and verification.status is not wanted_status:
                    continue
                if wanted_channel and verification.channel != wanted_channel:
                    continue
                found.append(replace(verification, to=phone.masked(verification.to)))
                if len(found) >= limit:
                    return found
            if len(sids) < page:
                break
        return found


def _fold(summary: StatsSummary, approval: Counter[int], counts: dict[str, str]) -> list[int]:
    """Add one bucket's counters to `summary` (and the approval times to `approval`); the
    bucket's started, delivered and approved."""
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
            summary.failed += value
        elif kind == "failed_by":
            channel, _, country = rest.partition("|")
            summary.by_channel.setdefault(channel, Counter())["failed"] += value
            summary.by_country.setdefault(country, Counter())["failed"] += value
        elif kind == "approval_s":
            approval[int(rest)] += value
    summary.started += point[0]
    summary.delivered += point[1]
    summary.approved += point[2]
    return point


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
