"""Events for the app (verification.approved, …): an outbox in Redis and the thread that empties it.

When a verification ends, the app that set EVENTS_WEBHOOK_URL gets a signed POST. Delivery has to
survive the app being down, slow or wrong, so publishing and delivering are split:

- Outbox. The script that ends a verification also stores the event that announces it (a hash
  with a snapshot of the verification) and marks it due now, in the outbox of the verification's
  bucket: one atomic step, so a crash can never leave an end unannounced. The dispatcher makes
  the exact JSON bytes to POST from the snapshot when it first claims it, and keeps them.
  (`EventOutbox.publish` queues an event with its body, in one Lua call.) Nothing is sent on
  the request's path: a slow app never slows a check, and an event is never lost while Redis
  keeps it. The outbox has a shard per bucket, spread over a cluster's masters; the dispatcher
  looks first where it was told an event went (`nudge`), and in every shard every few seconds,
  so a lost hint only delays.
- Lease. A dispatcher claims due events in one Lua call that also pushes each one's due time to
  now + lease and tags it with a lease token. Other workers and threads skip it meanwhile; if the
  worker dies mid-POST, the event is due again when the lease runs out. Settling a failure needs
  the token, so a worker that lost its lease cannot reschedule an event someone else now holds.
  A batch that would outrun its lease hands the events it has not POSTed back instead. Nothing is
  sent twice on purpose; a crash between the app's 2xx and our delete can still repeat one, which
  is why every POST carries the event id (`webhook-id`) for the app to drop duplicates by.
- Backoff. A non-2xx answer (3xx too: redirects are not followed), a timeout or a refused
  connection counts as a failed attempt; the event is due again after an exponential delay
  (doubling from `base_delay_ms`, capped at `max_delay_ms`) with equal jitter, so a fleet of
  workers does not hit a recovering app in step.
- Dead letter. After `max_attempts` failures the event moves to a "dead" sorted set and its hash
  is kept for 7 days for operators (`EventOutbox.dead`); the log names it, never its body.
- Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
  `webhook-signature` headers, signed by the `standardwebhooks` library, so the app verifies with
  any Standard Webhooks library. The timestamp is the wall-clock time of each attempt, so a
  retried delivery is not refused as a replay of an old one.

Why a thread in each worker (`EventDispatcher.start`) rather than a queue process (rq, Celery):
there is nothing more for operators to run or monitor, and it works with the embedded Redis,
which only the app's own processes reach. Every worker may run one; the leases keep them apart.

The schedule (due times, leases) uses the caller's clock, injectable for tests, not Redis' TIME:
hosts kept in step by NTP only shift a retry by their skew. Each script is given all its keys, in
one shard's slot.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import requests
from standardwebhooks.webhooks import Webhook

from ivr import keys
from ivr.metrics import metrics
from ivr.store import RedisClient

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset(
    {
        "verification.approved",
        "verification.expired",
        "verification.canceled",
        "verification.max_attempts_reached",
        "verification.failed",
    }
)

DEAD_RETENTION_MS = 7 * 24 * 3600 * 1000  # how long a given-up event stays readable for ops
DEAD_CAP = 1000  # given-up events kept per shard, newest first
LEGACY_SHARD = "events"  # the single outbox of releases before buckets: still drained
SHARDS = (LEGACY_SHARD, *(f"v{bucket}" for bucket in keys.BUCKETS))
_SHARD_SET = frozenset(SHARDS)
USER_AGENT = "ivr-events/1"

# Queue one event.
# KEYS[1] the shard's outbox (due sorted set)  KEYS[2] the event's hash
# ARGV[1] event id  ARGV[2] type  ARGV[3] body (the JSON bytes to POST)  ARGV[4] now ms
# Returns 1.
PUBLISH = """
redis.call('HSET', KEYS[2], 'type', ARGV[2], 'body', ARGV[3], 'attempts', '0',
           'created_at', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

# Claim the given events that are still due: each is due again at now + lease (if we never
# settle it, it is retried then) and carries our lease token. The caller read the ids from the
# due set a moment before; one claimed meanwhile by another worker is no longer due and is
# skipped, one whose hash is gone is dropped from the set.
# KEYS[1] the shard's outbox  KEYS[2..] the events' hashes, in the order of ARGV[4..]
# ARGV[1] now ms  ARGV[2] lease ms  ARGV[3] lease token  ARGV[4..] event ids
# Returns a flat list for each claimed event, oldest due first: id, type, body ("" when the
# event was queued by a script with a snapshot to make it from), snapshot, sid, created_at,
# attempts.
CLAIM = """
local now = tonumber(ARGV[1])
local lease_until = string.format('%d', now + tonumber(ARGV[2]))
local claimed = {}
for i = 4, #ARGV do
  local id, ekey = ARGV[i], KEYS[i - 2]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    local e = redis.call('HMGET', ekey, 'type', 'body', 'snapshot', 'sid', 'created_at',
                         'attempts')
    if e[1] then
      redis.call('ZADD', KEYS[1], lease_until, id)
      redis.call('HSET', ekey, 'lease', ARGV[3])
      table.insert(claimed, id)
      for j = 1, 6 do table.insert(claimed, e[j] or '') end
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return claimed
"""

# The app took the event (2xx): forget it. No lease check: delivered is delivered, even if our
# lease ran out meanwhile (whoever holds it now finds the hash gone and does nothing).
# KEYS[1] the shard's outbox  KEYS[2] its dead sorted set  KEYS[3] the event's hash
# ARGV[1] event id
# Returns 1 when the event was still stored, else 0.
DELIVERED = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[3])
"""

# An attempt failed: count it, then schedule the next one or give up. Only the lease holder may:
# a worker whose lease ran out (and was taken over) changes nothing. The dead set keeps the
# newest DEAD_CAP given-up events of the shard, for DEAD_RETENTION_MS.
# KEYS[1] the shard's outbox  KEYS[2] its dead sorted set  KEYS[3] the event's hash
# ARGV[1] event id  ARGV[2] lease token  ARGV[3] now ms  ARGV[4] next due ms (now + backoff)
# ARGV[5] max attempts  ARGV[6] dead retention ms  ARGV[7] why it failed ("HTTP 500", "Timeout")
# ARGV[8] how many given-up events the shard keeps
# Returns {outcome, attempts}: outcome "retry", "dead", or "stale" (lease lost: nothing changed).
FAILED = """
if redis.call('HGET', KEYS[3], 'lease') ~= ARGV[2] then return {'stale', 0} end
local attempts = redis.call('HINCRBY', KEYS[3], 'attempts', 1)
redis.call('HSET', KEYS[3], 'last_error', ARGV[7], 'last_attempt_at', ARGV[3])
redis.call('HDEL', KEYS[3], 'lease')
if attempts >= tonumber(ARGV[5]) then
  local now = tonumber(ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[8]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  return {'dead', attempts}
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return {'retry', attempts}
"""

# Hand back events we claimed but did not POST (the batch would have outrun its lease): due now,
# lease cleared, no attempt counted.
# KEYS[1] the shard's outbox  KEYS[2..] the events' hashes, in the order of ARGV[3..]
# ARGV[1] lease token  ARGV[2] now ms  ARGV[3..] event ids
# Returns how many were handed back (those whose lease was still ours).
RELEASE = """
local released = 0
for i = 3, #ARGV do
  local ekey = KEYS[i - 1]
  if redis.call('HGET', ekey, 'lease') == ARGV[1] then
    redis.call('HDEL', ekey, 'lease')
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    released = released + 1
  end
end
return released
"""


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _text(value: str | bytes) -> str:
    """Replies are str or bytes depending on the client's decode_responses; we take either."""
    return value.decode() if isinstance(value, bytes) else value


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ClaimedEvent:
    """An event this dispatcher holds the lease on until `lease_until` (ms)."""

    id: str
    type: str
    body: str
    attempts: int  # failed attempts before this one
    lease_token: str
    lease_until: int
    shard: str = LEGACY_SHARD


@dataclass(frozen=True)
class Settled:
    outcome: str  # retry | dead | stale
    attempts: int


@dataclass(frozen=True)
class Backlog:
    """What waits in the outbox: for /readyz and the metrics."""

    pending: int  # not yet delivered nor given up (leased ones included)
    oldest_due_ms: int | None  # the earliest due time among them (a retry's is in the future)
    dead: int  # given up, kept for operators


# Makes an event's `data` from the snapshot a script queued it with (the sid and the hash's
# fields as they were at the end): ivr.app gives the verifications' own rendering.
Render = Callable[[str, dict[str, str]], dict[str, Any]]


class EventOutbox:
    """The events waiting for delivery, in Redis, in shards: one per verification bucket (the
    scripts that end a verification queue its event there, in the same step) and the outbox
    of earlier releases. The dispatcher visits the shards it was told of (`nudge`) at once and
    every shard every `visit_all_ms`."""

    def __init__(
        self,
        client: RedisClient,
        clock_ms: Callable[[], int] | None = None,
        *,
        render: Render | None = None,
        visit_all_ms: int = 5000,
    ):
        self.redis = client
        self.clock_ms = clock_ms or _wall_ms
        self.render = render
        self.visit_all_ms = visit_all_ms
        self.shards = SHARDS
        self._visited_all_at = -visit_all_ms
        self._publish = client.register_script(PUBLISH)
        self._claim = client.register_script(CLAIM)
        self._delivered = client.register_script(DELIVERED)
        self._failed = client.register_script(FAILED)
        self._release = client.register_script(RELEASE)

    def publish(self, event_type: str, data: dict[str, Any], shard: str = LEGACY_SHARD) -> str:
        """Queue one event, due now; its id. The body is fixed here, so every retry POSTs (and
        signs) the same bytes. (A verification's end is queued by the script that ends it.)"""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        now = self.clock_ms()
        event_id = "EV" + secrets.token_hex(16)
        body = _body(event_id, event_type, now, data)
        self._publish(
            keys=[keys.events_due(shard), keys.event(shard, event_id)],
            args=[event_id, event_type, body, now],
        )
        metrics().events.labels("published").inc()
        if shard != LEGACY_SHARD:  # that one is visited every round
            self.nudge(shard)
        return event_id

    def nudge(self, shard: str) -> None:
        """An event was just queued in `shard`: the dispatcher looks there in its next round."""
        self.redis.sadd(keys.events_hot(), shard)

    def pending_count(self) -> int:
        """Events not yet delivered nor given up (claimed ones included)."""
        return self.backlog().pending

    def backlog(self) -> Backlog:
        """How many wait, since when the first is due, how many were given up: three reads
        per shard, in one pipeline (one round trip per master)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zcard(keys.events_due(shard))
            pipe.zrange(keys.events_due(shard), 0, 0, withscores=True)
            pipe.zcard(keys.events_dead(shard))
        replies = pipe.execute()
        pending = sum(int(n) for n in replies[0::3])
        firsts = [int(first[0][1]) for first in replies[1::3] if first]
        dead = sum(int(n) for n in replies[2::3])
        return Backlog(pending, min(firsts) if firsts else None, dead)

    def dead(self) -> list[dict]:
        """What was given up, oldest first: id, type, attempts, times (ms), last error, data.
        For operators and tests, not for a hot path."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zrange(keys.events_dead(shard), 0, -1, withscores=True)
        entries = [
            (shard, _text(member), int(score))
            for shard, found in zip(self.shards, pipe.execute(), strict=True)
            for member, score in found
        ]
        pipe = self.redis.pipeline(transaction=False)
        for shard, member, _score in entries:
            pipe.hgetall(keys.event(shard, member))
        found: list[dict] = []
        for (_shard, member, score), stored in zip(entries, pipe.execute(), strict=True):
            if not stored:
                continue  # its hash expired a moment before the set was trimmed
            event = {_text(k): _text(v) for k, v in stored.items()}
            found.append(
                {
                    "id": member,
                    "type": event["type"],
                    "attempts": int(event["attempts"]),
                    "created_at": int(event["created_at"]),
                    "given_up_at": score,
                    "last_error": event.get("last_error", ""),
                    "data": json.loads(self._body_of(member, event))["data"],
                }
            )
        return sorted(found, key=lambda event: event["given_up_at"])

    def _body_of(self, event_id: str, event: dict[str, str]) -> str:
        """The bytes to POST: stored, or made from the snapshot a script queued it with."""
        if event.get("body"):
            return event["body"]
        flat = json.loads(event.get("snapshot") or "[]")
        fields = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else {}
        data = self.render(event.get("sid", ""), fields) if self.render else fields
        return _body(event_id, event["type"], int(event["created_at"]), data)

    # The dispatcher's side: claim, then settle each claimed event one way or the other.

    def claim(self, limit: int, lease_ms: int, now_ms: int) -> list[ClaimedEvent]:
        """Lease up to `limit` due events to the caller, oldest due first: from the shards it
        was told of, and from every shard once `visit_all_ms` has passed."""
        shards = self._shards_to_visit(now_ms)
        if not shards:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for shard in shards:
            pipe.zrangebyscore(keys.events_due(shard), "-inf", now_ms, start=0, num=limit)
        token = secrets.token_hex(8)
        claimed: list[tuple[int, ClaimedEvent]] = []
        busy: list[str] = []
        for shard, ids in zip(shards, pipe.execute(), strict=True):
            if not ids or len(claimed) >= limit:
                if ids:
                    busy.append(shard)
                continue
            ids = [_text(event_id) for event_id in ids][: limit - len(claimed)]
            flat = self._claim(
                keys=[keys.events_due(shard), *(keys.event(shard, i) for i in ids)],
                args=[now_ms, lease_ms, token, *ids],
            )
            flat = [_text(value) for value in flat]
            for i in range(0, len(flat), 7):
                event_id, event_type, body, snapshot, sid, created_at, attempts = flat[i : i + 7]
                if not body:
                    event = {"type": event_type, "snapshot": snapshot, "sid": sid}
                    body = self._body_of(event_id, event | {"created_at": created_at})
                    self.redis.hset(keys.event(shard, event_id), "body", body)
                claimed.append(
                    (
                        int(created_at or 0),
                        ClaimedEvent(
                            id=event_id,
                            type=event_type,
                            body=body,
                            attempts=int(attempts or 0),
                            lease_token=token,
                            lease_until=now_ms + lease_ms,
                            shard=shard,
                        ),
                    )
                )
            if len(ids) == limit:
                busy.append(shard)  # more may wait there: look again next round
        for shard in busy:
            self.nudge(shard)
        return [event for _created, event in sorted(claimed, key=lambda pair: pair[0])]

    def _shards_to_visit(self, now_ms: int) -> list[str]:
        """The shards told of, the one `publish` uses, and every 'visit_all_ms' all of them."""
        hinted = self.redis.spop(keys.events_hot(), 64) or []
        if now_ms - self._visited_all_at >= self.visit_all_ms:
            self._visited_all_at = now_ms
            return list(self.shards)
        told = {_text(shard) for shard in hinted} & _SHARD_SET
        return [LEGACY_SHARD, *sorted(told - {LEGACY_SHARD})]

    def settle_delivered(self, event: ClaimedEvent | str) -> bool:
        """Forget a delivered event; False if it was already gone."""
        shard, event_id = _where(event)
        deleted = self._delivered(
            keys=[keys.events_due(shard), keys.events_dead(shard), keys.event(shard, event_id)],
            args=[event_id],
        )
        return bool(deleted)

    def settle_failed(
        self,
        event: ClaimedEvent,
        *,
        now_ms: int,
        next_due_ms: int,
        max_attempts: int,
        reason: str,
    ) -> Settled:
        """Count a failed attempt: due again at `next_due_ms`, or dead at `max_attempts`."""
        shard = event.shard
        outcome, attempts = self._failed(
            keys=[keys.events_due(shard), keys.events_dead(shard), keys.event(shard, event.id)],
            args=[
                event.id,
                event.lease_token,
                now_ms,
                next_due_ms,
                max_attempts,
                DEAD_RETENTION_MS,
                reason,
                DEAD_CAP,
            ],
        )
        return Settled(_text(outcome), int(attempts))

    def release(self, events: list[ClaimedEvent], now_ms: int) -> int:
        """Hand back claimed events that were not attempted, due now; how many were ours."""
        released = 0
        for token, shard in {(event.lease_token, event.shard) for event in events}:
            ids = [e.id for e in events if e.lease_token == token and e.shard == shard]
            released += int(
                self._release(
                    keys=[keys.events_due(shard), *(keys.event(shard, i) for i in ids)],
                    args=[token, now_ms, *ids],
                )
            )
        return released


def _where(event: ClaimedEvent | str) -> tuple[str, str]:
    if isinstance(event, ClaimedEvent):
        return event.shard, event.id
    return LEGACY_SHARD, event


def _body(event_id: str, event_type: str, created_ms: int, data: dict[str, Any]) -> str:
    return json.dumps(
        {"id": event_id, "type": event_type, "created_at": _rfc3339(created_ms), "data": data},
        separators=(",", ":"),
    )


class EventDispatcher:
    """POSTs due events to the app's webhook, signed, and settles each by the answer."""

    def __init__(
        self,
        outbox: EventOutbox,
        *,
        url: str,
        secret: str,
        timeout: float = 5.0,
        max_attempts: int = 10,
        session: requests.Session | None = None,
        clock_ms: Callable[[], int] | None = None,
        base_delay_ms: int = 1000,
        max_delay_ms: int = 600_000,
        lease_ms: int = 60_000,
        chores: tuple[Callable[[], object], ...] = (),
    ):
        # Connect and read may each take `timeout`. The lease is stretched to at least four such
        # attempts, so a slow app (EVENTS_WEBHOOK_TIMEOUT_SECONDS up to 30) does not cut every
        # batch short after its first POST (see _deliver_batch).
        self._attempt_ms = int(2 * timeout * 1000)
        if max_attempts < 1 or base_delay_ms < 1 or max_delay_ms < base_delay_ms:
            raise ValueError("need max_attempts >= 1 and 1 <= base_delay_ms <= max_delay_ms")
        self.outbox = outbox
        self.url = url
        self._webhook = Webhook(secret)  # the secret itself is not kept: it cannot be logged
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.session = session or requests.Session()
        self.clock_ms = clock_ms or outbox.clock_ms
        self.base_delay_ms = base_delay_ms
        self.max_delay_ms = max_delay_ms
        self.lease_ms = max(lease_ms, 4 * self._attempt_ms)
        self._random = random.SystemRandom()
        # Run before each round, in the same thread (the verifications' expiry sweep: it
        # publishes the events this round then delivers).
        self.chores = chores

    def backoff_ms(self, attempts: int) -> int:
        """Delay after the `attempts`-th failure: base * 2^(attempts-1), capped, then equal
        jitter (between half and all of it), so delays still grow while workers spread out."""
        ceiling = min(self.max_delay_ms, self.base_delay_ms * 2 ** min(attempts - 1, 40))
        return ceiling // 2 + self._random.randint(0, ceiling - ceiling // 2)

    def deliver_due(self, limit: int = 50) -> int:
        """Claim up to `limit` due events, POST each and settle it; how many the app took."""
        return self._deliver_batch(limit)[1]

    def _deliver_batch(self, limit: int) -> tuple[int, int, int]:
        """(claimed, delivered, handed back). Events left unattempted when the lease is nearly
        out, or when something unexpected is raised, are handed back rather than left to wait out
        the lease; the one in flight at such an exception stays leased (it may have reached the
        app)."""
        claimed = self.outbox.claim(limit, self.lease_ms, self.clock_ms())
        delivered = 0
        remaining = list(claimed)
        try:
            while remaining:
                event = remaining[0]
                if self.clock_ms() + self._attempt_ms > event.lease_until:
                    break  # another worker may take it once the lease ends: do not race it
                remaining.pop(0)
                reason = self._post(event)
                if reason is None:
                    self.outbox.settle_delivered(event)
                    metrics().events.labels("delivered").inc()
                    delivered += 1
                else:
                    self._settle_failure(event, reason)
        finally:
            if remaining:
                self.outbox.release(remaining, self.clock_ms())
        return len(claimed), delivered, len(remaining)

    def _post(self, event: ClaimedEvent) -> str | None:
        """POST one event: None when the app took it (2xx), else why not, for the log and the
        event's hash (a status or an exception's class name: never the body or the secret)."""
        sent_at = datetime.fromtimestamp(int(time.time()), UTC)  # this attempt, on the wall clock
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(event.id, sent_at, event.body),
        }
        try:
            # stream=True: only the status is wanted; the app's body is never read into memory.
            with self.session.post(
                self.url,
                data=event.body.encode(),
                headers=headers,
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,
                stream=True,
            ) as response:
                status = response.status_code
        except requests.RequestException as exc:
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _settle_failure(self, event: ClaimedEvent, reason: str) -> None:
        now = self.clock_ms()
        delay = self.backoff_ms(event.attempts + 1)
        settled = self.outbox.settle_failed(
            event,
            now_ms=now,
            next_due_ms=now + delay,
            max_attempts=self.max_attempts,
            reason=reason,
        )
        outcome = {"dead": "dead_lettered", "retry": "retried"}.get(settled.outcome, "lease_lost")
        metrics().events.labels(outcome).inc()
        if settled.outcome == "dead":
            log.error(
                "event %s (%s) given up after %d attempts; last: %s",
                event.id,
                event.type,
                settled.attempts,
                reason,
            )
        elif settled.outcome == "retry":
            log.warning(
                "event %s (%s) not delivered (attempt %d: %s); next try in %.1f s",
                event.id,
                event.type,
                settled.attempts,
                reason,
                delay / 1000,
            )
        else:
            log.info(
                "event %s (%s): lease lost during the attempt (%s)", event.id, event.type, reason
            )

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Deliver until `stop` is set. Never dies of an exception: a delivery thread that died
        would leave events piling up unseen. A full batch, or one that handed events back, is
        followed at once by the next."""
        limit = 50
        redis_down = False
        while not stop.is_set():
            busy = False
            try:
                for chore in self.chores:
                    chore()
                claimed, _delivered, handed_back = self._deliver_batch(limit)
                busy = claimed == limit or handed_back > 0
                if redis_down:
                    log.info("events: Redis reachable again")
                    redis_down = False
            except redis.RedisError as exc:
                if not redis_down:  # once per outage, not once per interval
                    log.warning("events: Redis unavailable (%s); will retry", type(exc).__name__)
                redis_down = True
            except Exception:
                log.exception("events: delivery round failed; will retry")
            if not busy:
                stop.wait(interval)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """Run the dispatcher in a daemon thread of this process (call it after a fork, e.g.
        in each gunicorn worker); set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="ivr-events", daemon=True)
        thread.start()
        return thread, stop
