"""Verifications in Redis: every state change is one Lua script, so it is atomic.

Each script is a constant with a comment that names its KEYS and ARGV and what it returns (rq's
style). Scripts read the time with Redis' TIME, so expiry does not depend on the clocks of the
hosts running the app. A script may derive further keys from ARGV[1], the key prefix of the
number's slot (`ivr:{tag}:`): those keys share the hash tag, hence the cluster slot, of KEYS[1].
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from ivr import keys
from ivr.config import Rate
from ivr.store import hash_from_flat
from ivr.verification.models import Status, Verification, routing_tag_of

# Lua snippets shared by the scripts below (string-prefixed to each script that needs them).
_LUA_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_s = string.format('%d', now)
"""

# Ends a verification: final status, code hash and sealed copy gone, pointer freed (if ours).
_LUA_FINISH = """
local function finish(prefix, vkey, sid, number, status, now_s)
  redis.call('HSET', vkey, 'status', status, 'updated_at', now_s)
  redis.call('DEL', prefix .. 'code:' .. sid)
  local pointer = redis.call('HGET', vkey, 'pointer') or (prefix .. 'pending:' .. number)
  if redis.call('GET', pointer) == sid then redis.call('DEL', pointer) end
end
"""

# Start a verification for a number, or add a send attempt to its pending one (a re-send keeps
# the code, the expiry and the count of wrong checks: NIST SP 800-63B). Each kind of
# verification has a pointer of its own (the caller picks KEYS[1]: keys.pending with the scope
# of an IVR call, of flash calls, or of one missed-call number), so a call or SMS code, a flash
# call and each missed-call number never re-send, nor cancel, one another.
# KEYS[1] the number's pending pointer   KEYS[2] new verification hash   KEYS[3] new code hash
# ARGV[1] slot key prefix  ARGV[2] new sid  ARGV[3] number (E.164)  ARGV[4] channel
# ARGV[5] locale  ARGV[6] code HMAC  ARGV[7] sealed code  ARGV[8] code lifetime ms
# ARGV[9] retention ms: the record outlives the code by this much, so a verification stays
# readable for at least that long after it ended
# ARGV[10] "resend" (a pending one takes a new attempt) or "fresh" (a pending one is left
# alone, and nothing is created: a missed-call verification is never handed to a second asker)
# ARGV[11] the first attempt's status
# ARGV[12] JSON object of further fields a new verification keeps (call_to, code_length…)
# Returns {"created"|"resent"|"taken", sid, attempt index (0-based), HGETALL of the
# verification, sealed code (the existing one on a re-send, so an SMS re-send carries the same
# code)}; "taken" (the pending one's sid) returns no verification.
START_OR_RESEND = (
    _LUA_NOW
    + """
local attempt = {channel = ARGV[4], status = ARGV[11], created_at = now, updated_at = now}
local sid = redis.call('GET', KEYS[1])
if sid then
  local vkey = ARGV[1] .. 'verification:' .. sid
  local current = redis.call('HMGET', vkey, 'status', 'expires_at', 'attempts')
  local sealed = redis.call('HGET', ARGV[1] .. 'code:' .. sid, 'sealed')
  if current[1] == 'pending' and tonumber(current[2]) > now and sealed then
    if ARGV[10] == 'fresh' then return {'taken', sid, 0, {}, ''} end
    local attempts = cjson.decode(current[3])
    table.insert(attempts, attempt)
    redis.call('HSET', vkey, 'attempts', cjson.encode(attempts), 'channel', ARGV[4],
               'locale', ARGV[5], 'updated_at', now_s)
    return {'resent', sid, #attempts - 1, redis.call('HGETALL', vkey), sealed}
  end
end
local expires_s = string.format('%d', now + tonumber(ARGV[8]))
redis.call('HSET', KEYS[2], 'sid', ARGV[2], 'to', ARGV[3], 'channel', ARGV[4],
           'locale', ARGV[5], 'status', 'pending', 'created_at', now_s, 'updated_at', now_s,
           'expires_at', expires_s, 'check_attempts', '0', 'attempts', cjson.encode({attempt}),
           'pointer', KEYS[1])
for name, value in pairs(cjson.decode(ARGV[12])) do
  redis.call('HSET', KEYS[2], name, tostring(value))
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]) + tonumber(ARGV[9]))
redis.call('HSET', KEYS[3], 'digest', ARGV[6], 'sealed', ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[8])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[8])
return {'created', ARGV[2], 0, redis.call('HGETALL', KEYS[2]), ARGV[7]}
"""
)

# How far along a delivery status is: a status never replaces one of higher rank, since
# carrier callbacks can arrive out of order.
_LUA_RANK = """
local RANK = {requested = 0, accepted = 1, queued = 1, scheduled = 1, initiated = 2,
  sending = 2, ringing = 3, sent = 3, ['in-progress'] = 4, completed = 5, busy = 5,
  ['no-answer'] = 5, canceled = 5, failed = 5, delivered = 5, undelivered = 5, read = 6}
"""

# Whether a carrier status proves the code reached the phone: an SMS sent or delivered, a call
# answered (in-progress, completed), a flash call ringing (its caller ID is the code). The
# first proof is noted in the verification (delivered_at), so a verification counts as
# delivered once, whatever re-sends and repeated callbacks say. Returns 1 the first time.
_LUA_FIRST_DELIVERY = """
local PROOF = {sent = true, delivered = true, read = true, ['in-progress'] = true,
  completed = true}
local function first_delivery(vkey, channel, status, now_s)
  if not (PROOF[status] or (channel == 'flash_call' and status == 'ringing')) then return 0 end
  return redis.call('HSETNX', vkey, 'delivered_at', now_s)
end
"""

# Record the carrier's answer to a send: its sid and status, or the error. A status callback
# that came before this answer (parked by RECORD_DELIVERY) is merged in. The verification fails
# only when every one of its sends has failed: a concurrent re-send may have got through.
# KEYS[1] verification hash
# ARGV[1] slot key prefix  ARGV[2] attempt index  ARGV[3] attempt status  ARGV[4] provider sid
# ARGV[5] error
# Returns {the verification's status, 1 when the attempt's status (a parked one included) is
# its first proof of delivery, else 0}, or false when it is gone.
SETTLE_SEND = (
    _LUA_NOW
    + _LUA_FINISH
    + _LUA_RANK
    + _LUA_FIRST_DELIVERY
    + """
local current = redis.call('HMGET', KEYS[1], 'sid', 'to', 'status', 'attempts', 'channel')
if not current[1] then return false end
local attempts = cjson.decode(current[4])
local attempt = attempts[tonumber(ARGV[2]) + 1]
if not attempt then return {current[3], 0} end
attempt.status = ARGV[3]
attempt.updated_at = now
if ARGV[5] ~= '' then attempt.error = ARGV[5] end
if ARGV[4] ~= '' then
  attempt.provider_sid = ARGV[4]
  local parked = redis.call('HGET', KEYS[1], 'early:' .. ARGV[4])
  if parked then
    local early = cjson.decode(parked)
    if (RANK[early.status] or 0) >= (RANK[attempt.status] or 0) then
      attempt.status = early.status
      if early.error ~= '' then attempt.error = early.error end
    end
    redis.call('HDEL', KEYS[1], 'early:' .. ARGV[4])
  end
end
redis.call('HSET', KEYS[1], 'attempts', cjson.encode(attempts), 'updated_at', now_s)
if ARGV[3] == 'failed' and current[3] == 'pending' then
  for _, other in ipairs(attempts) do
    if other.status ~= 'failed' then return {current[3], 0} end
  end
  finish(ARGV[1], KEYS[1], current[1], current[2], 'failed', now_s)
  return {'failed', 0}
end
return {current[3], first_delivery(KEYS[1], current[5], attempt.status, now_s)}
"""
)

# Apply a carrier status callback to the attempt with that provider sid, unless it is stale.
# A callback for a sid not recorded yet (it beat our own settle_send) is parked in the hash.
# KEYS[1] verification hash
# ARGV[1] provider sid  ARGV[2] new status  ARGV[3] error code ('' if none)
# Returns {1 when an attempt was updated, 2 when parked, 0 when stale or the hash is gone;
# 1 when the status (parked or not) is the verification's first proof of delivery, else 0}.
RECORD_DELIVERY = (
    _LUA_NOW
    + _LUA_RANK
    + _LUA_FIRST_DELIVERY
    + """
local current = redis.call('HMGET', KEYS[1], 'attempts', 'channel')
if not current[1] then return {0, 0} end
local attempts = cjson.decode(current[1])
for _, attempt in ipairs(attempts) do
  if attempt.provider_sid == ARGV[1] then
    if (RANK[ARGV[2]] or 0) < (RANK[attempt.status] or 0) then return {0, 0} end
    attempt.status = ARGV[2]
    attempt.updated_at = now
    if ARGV[3] ~= '' then attempt.error = ARGV[3] end
    redis.call('HSET', KEYS[1], 'attempts', cjson.encode(attempts), 'updated_at', now_s)
    return {1, first_delivery(KEYS[1], current[2], ARGV[2], now_s)}
  end
end
local field = 'early:' .. ARGV[1]
local parked = redis.call('HGET', KEYS[1], field)
if parked and (RANK[cjson.decode(parked).status] or 0) > (RANK[ARGV[2]] or 0) then
  return {0, 0}
end
redis.call('HSET', KEYS[1], field, cjson.encode({status = ARGV[2], error = ARGV[3]}))
return {2, first_delivery(KEYS[1], current[2], ARGV[2], now_s)}
"""
)

# Check a code: expiry, the number's failure budget, the per-verification attempt limit and a
# constant-time comparison of HMACs, all at once; a right code approves exactly once.
# KEYS[1] the verification hash (ARGV[2] = "sid") or the number's pending pointer ("to")
# ARGV[1] slot key prefix  ARGV[2] "sid"|"to"  ARGV[3] HMAC of the submitted code
# ARGV[4] max attempts (a verification's own max_attempts field, when it has one, wins)
# ARGV[5] failure budget count  ARGV[6] failure budget window ms
# ARGV[7] the number the verification must be for ("" when the caller gave only a sid)
# Returns {outcome, sid, status, detail, number}: outcome is "approved", "wrong",
# "not_pending", "expired" (it was pending, and this check found it past its expiry),
# "throttled" (detail = ms until the budget allows a check), "not_found", "other_number" (the
# sid's verification is for another number than ARGV[7]: nothing of it is returned) or
# "not_checkable" (a missed-call verification: the call approves it, no code does).
CHECK = (
    _LUA_NOW
    + _LUA_FINISH
    + """
local function same(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i))) end
  return diff == 0
end
local prefix, vkey, sid = ARGV[1], KEYS[1], nil
if ARGV[2] == 'to' then
  sid = redis.call('GET', KEYS[1])
  if not sid then return {'not_found', '', '', 0, ''} end
  vkey = prefix .. 'verification:' .. sid
end
local v = redis.call('HMGET', vkey, 'sid', 'to', 'status', 'expires_at', 'channel',
                    'max_attempts')
if not v[1] then return {'not_found', '', '', 0, ''} end
if ARGV[7] ~= '' and v[2] ~= ARGV[7] then return {'other_number', '', '', 0, ''} end
sid = v[1]
if v[5] == 'missed_call' then return {'not_checkable', sid, v[3], 0, v[2]} end
if v[3] ~= 'pending' then return {'not_pending', sid, v[3], 0, v[2]} end
local max_attempts = tonumber(v[6] or ARGV[4])
local digest = redis.call('HGET', prefix .. 'code:' .. sid, 'digest')
if now >= tonumber(v[4]) or not digest then
  finish(prefix, vkey, sid, v[2], 'expired', now_s)
  return {'expired', sid, 'expired', 0, v[2]}
end
local failures = prefix .. 'check-failures:' .. v[2]
local window = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
if redis.call('ZCARD', failures) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', failures, 0, 0, 'WITHSCORES')
  return {'throttled', sid, 'pending', tonumber(oldest[2]) + window - now, v[2]}
end
if same(digest, ARGV[3]) then
  finish(prefix, vkey, sid, v[2], 'approved', now_s)
  return {'approved', sid, 'approved', 0, v[2]}
end
local attempts = redis.call('HINCRBY', vkey, 'check_attempts', 1)
redis.call('ZADD', failures, now, now_s .. ':' .. sid .. ':' .. attempts)
redis.call('PEXPIRE', failures, window)
if attempts >= max_attempts then
  finish(prefix, vkey, sid, v[2], 'max_attempts_reached', now_s)
  return {'wrong', sid, 'max_attempts_reached', attempts, v[2]}
end
redis.call('HSET', vkey, 'updated_at', now_s)
return {'wrong', sid, 'pending', attempts, v[2]}
"""
)

# Cancel a pending verification; with ARGV[2] = "expire", only end it if it is past its expiry
# (the expiry sweeper).
# KEYS[1] verification hash   ARGV[1] slot key prefix   ARGV[2] "cancel" | "expire"
# Returns {1, status} when this call ended it (canceled, or expired: it was past its expiry),
# {0, status} when it had already ended (or, expiring, is not due yet), or false for an
# unknown verification.
CANCEL = (
    _LUA_NOW
    + _LUA_FINISH
    + """
local v = redis.call('HMGET', KEYS[1], 'sid', 'to', 'status', 'expires_at')
if not v[1] then return false end
if v[3] ~= 'pending' then return {0, v[3]} end
if now >= tonumber(v[4]) then
  finish(ARGV[1], KEYS[1], v[1], v[2], 'expired', now_s)
  return {1, 'expired'}
end
if ARGV[2] == 'expire' then return {0, 'pending'} end
finish(ARGV[1], KEYS[1], v[1], v[2], 'canceled', now_s)
return {1, 'canceled'}
"""
)

# Hand the sealed code to the call we placed for this verification, a bounded number of times.
# KEYS[1] verification hash   KEYS[2] code hash
# ARGV[1] the CallSid asking  ARGV[2] most reveals per call
# Returns {outcome, sealed code or "", readings left}: outcome "ok", or why not: "gone" (not
# pending, expired, unknown), "stranger" (a call we did not place for it), "exhausted" (heard
# enough times). The call's language is in its URL, so nothing else is asked of Redis.
REVEAL = (
    _LUA_NOW
    + """
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'attempts')
if not v[1] or v[1] ~= 'pending' or now >= tonumber(v[2]) then return {'gone', '', 0} end
local ours = false
for _, attempt in ipairs(cjson.decode(v[3])) do
  if attempt.channel == 'call' and attempt.provider_sid == ARGV[1] then ours = true end
end
if not ours then return {'stranger', '', 0} end
local sealed = redis.call('HGET', KEYS[2], 'sealed')
if not sealed then return {'gone', '', 0} end
local heard = redis.call('HINCRBY', KEYS[2], 'reveals:' .. ARGV[1], 1)
if heard > tonumber(ARGV[2]) then return {'exhausted', '', 0} end
return {'ok', sealed, tonumber(ARGV[2]) - heard}
"""
)


# A call rang one of our missed-call numbers: approve the caller's missed-call verification
# that waits for a call to that very number, if the caller ID may be trusted. The call is
# rejected whatever this says. Each CallSid is taken once, whatever came of it: Twilio's
# signature carries no timestamp, so a captured request replayed later must not approve a later
# verification of the same phone.
# KEYS[1] the caller's pointer for this number (keys.pending with scope missed-call:<number>)
# KEYS[2] the CallSid's "seen" marker (in the caller's slot)
# ARGV[1] slot key prefix  ARGV[2] CallSid
# ARGV[3] attestation to record (A, B, C, "failed" or "none")  ARGV[4] "1" when the caller ID
# may approve (policy passed), "0" when not (failed validation, or below the required level)
# ARGV[5] how long a CallSid is remembered, ms
# Returns {outcome, sid}: outcome "approved", "refused" (caller ID not trusted: the verification
# stays pending, so a spoofer cannot spoil the real user's), "expired", "replay" (this CallSid
# came before) or "nothing_pending" (nothing waits for a call from this caller to this number).
APPROVE_BY_CALL = (
    _LUA_NOW
    + _LUA_FINISH
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[5]) then return {'replay', ''} end
local sid = redis.call('GET', KEYS[1])
if not sid then return {'nothing_pending', ''} end
local vkey = ARGV[1] .. 'verification:' .. sid
local v = redis.call('HMGET', vkey, 'sid', 'to', 'status', 'expires_at', 'channel', 'attempts')
if not v[1] or v[5] ~= 'missed_call' or v[3] ~= 'pending' then return {'nothing_pending', ''} end
if now >= tonumber(v[4]) then
  finish(ARGV[1], vkey, sid, v[2], 'expired', now_s)
  return {'expired', sid}
end
local attempts = cjson.decode(v[6])
local attempt = attempts[#attempts]
attempt.provider_sid = ARGV[2]
attempt.updated_at = now
attempt.status = ARGV[4] == '1' and 'received' or 'refused'
redis.call('HSET', vkey, 'attempts', cjson.encode(attempts), 'attestation', ARGV[3],
           'updated_at', now_s)
if ARGV[4] ~= '1' then return {'refused', sid} end
finish(ARGV[1], vkey, sid, v[2], 'approved', now_s)
return {'approved', sid}
"""
)


# Take verifications whose expiry has passed off the sweep's list for a while (a lease: if the
# sweeping worker dies, they are due again after it), so two workers do not sweep the same.
# KEYS[1] the expiries sorted set   ARGV[1] most to take   ARGV[2] lease ms
# Returns the sids taken.
CLAIM_EXPIRED = (
    _LUA_NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, sid in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), sid)
end
return due
"""
)


@dataclass(frozen=True)
class StartResult:
    verification: Verification
    attempt_index: int
    created: bool  # False when an existing pending verification was re-sent
    sealed_code: str


@dataclass(frozen=True)
class Settled:
    status: Status | None  # the verification's status after the carrier's answer; None: gone
    first_delivery: bool  # the answer is the verification's first proof of delivery


@dataclass(frozen=True)
class DeliveryUpdate:
    applied: bool  # the attempt was updated, or the callback parked until its send settles
    first_delivery: bool  # the status is the verification's first proof of delivery


@dataclass(frozen=True)
class CheckResult:
    outcome: str  # approved | wrong | not_pending | expired | throttled | not_found | other_number
    sid: str | None
    status: Status | None
    to: str | None = None
    attempts: int = 0
    retry_after_ms: int = 0


@dataclass(frozen=True)
class RevealResult:
    outcome: str  # ok | gone | stranger | exhausted
    sealed: str | None = None
    readings_left: int = 0


def missed_call_scope(called: str) -> str:
    """The pointer scope of a missed-call verification that waits for a call to `called`: one
    per (phone, our number), so each pending one answers to exactly one call."""
    return f"missed-call:{called}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class VerificationStore:
    """Typed access to verification state; one Redis round trip per method."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._start = client.register_script(START_OR_RESEND)
        self._settle = client.register_script(SETTLE_SEND)
        self._delivery = client.register_script(RECORD_DELIVERY)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)
        self._reveal = client.register_script(REVEAL)
        self._approve_by_call = client.register_script(APPROVE_BY_CALL)
        self._claim_expired = client.register_script(CLAIM_EXPIRED)

    def start_or_resend(
        self,
        *,
        tag: str,
        new_sid: str,
        to: str,
        channel: str,
        locale: str,
        digest: str,
        sealed: str,
        ttl_ms: int,
        retention_ms: int,
        scope: str | None = None,
        resend: bool = True,
        first_status: str = "requested",
        fields: dict[str, str | int] | None = None,
    ) -> StartResult | None:
        """Create a verification, or add an attempt to the pending one of the number (in
        `scope`, when given: see keys.pending). Without `resend`, None when one is pending.
        `fields`: what a new verification keeps besides the common ones (call_to…)."""
        pointer = keys.pending(tag, to, scope)
        outcome, _sid, index, flat, sealed_code = self._start(
            keys=[pointer, keys.verification(tag, new_sid), keys.code(tag, new_sid)],
            args=[
                keys.number_prefix(tag),
                new_sid,
                to,
                channel,
                locale,
                digest,
                sealed,
                ttl_ms,
                retention_ms,
                "resend" if resend else "fresh",
                first_status,
                json.dumps(fields or {}),
            ],
        )
        if outcome == "taken":
            return None
        verification = Verification.from_hash(hash_from_flat(flat), _now_ms())
        return StartResult(verification, int(index), outcome == "created", sealed_code)

    def settle_send(
        self,
        sid: str,
        attempt_index: int,
        *,
        status: str,
        provider_sid: str = "",
        error: str = "",
    ) -> Status | None:
        """Record the carrier's answer on an attempt; the verification's status after it."""
        return self.settle(
            sid, attempt_index, status=status, provider_sid=provider_sid, error=error
        ).status

    def settle(
        self,
        sid: str,
        attempt_index: int,
        *,
        status: str,
        provider_sid: str = "",
        error: str = "",
    ) -> Settled:
        """`settle_send`, telling also whether the answer is the first proof of delivery."""
        tag = routing_tag_of(sid)
        reply = self._settle(
            keys=[keys.verification(tag, sid)],
            args=[
                keys.number_prefix(tag),
                attempt_index,
                status,
                provider_sid,
                error,
            ],
        )
        if not reply:
            return Settled(None, False)
        return Settled(Status(reply[0]), bool(reply[1]))

    def record_delivery(
        self, sid: str, provider_sid: str, status: str, error: str = ""
    ) -> DeliveryUpdate:
        """Apply (or park, if its send is not settled yet) a carrier status callback; not
        applied when it is out of date or the verification is gone."""
        tag = routing_tag_of(sid)
        applied, first = self._delivery(
            keys=[keys.verification(tag, sid)], args=[provider_sid, status, error]
        )
        return DeliveryUpdate(bool(applied), bool(first))

    def check(
        self,
        *,
        digest: str,
        max_attempts: int,
        failure_budget: Rate,
        sid: str | None = None,
        tag: str | None = None,
        to: str | None = None,
        scope: str | None = None,
    ) -> CheckResult:
        """Check a code against the verification `sid` (which must be for `to`, when given), or
        the pending one of (`tag`, `to`) in `scope` (see keys.pending)."""
        if sid is not None:
            tag, mode = routing_tag_of(sid), "sid"
            key = keys.verification(tag, sid)  # the tag given with `to` is not needed
        elif tag is not None and to is not None:
            key, mode = keys.pending(tag, to, scope), "to"
        else:
            raise ValueError("check needs a sid, or a tag and a number")
        outcome, found_sid, status, detail, number = self._check(
            keys=[key],
            args=[
                keys.number_prefix(tag),
                mode,
                digest,
                max_attempts,
                failure_budget.limit,
                failure_budget.window_seconds * 1000,
                to or "",
            ],
        )
        return CheckResult(
            outcome=outcome,
            sid=found_sid or None,
            status=Status(status) if status else None,
            to=number or None,
            attempts=int(detail) if outcome == "wrong" else 0,
            retry_after_ms=int(detail) if outcome == "throttled" else 0,
        )

    def cancel(self, sid: str, *, only_if_expired: bool = False) -> tuple[bool, Status] | None:
        """Cancel if pending (or, `only_if_expired`, end it only if past its expiry): (whether
        this call ended it, status after); None if unknown."""
        tag = routing_tag_of(sid)
        reply = self._cancel(
            keys=[keys.verification(tag, sid)],
            args=[keys.number_prefix(tag), "expire" if only_if_expired else "cancel"],
        )
        return (bool(reply[0]), Status(reply[1])) if reply else None

    def reveal(self, sid: str, call_sid: str, max_reveals: int) -> RevealResult:
        """The sealed code for a call we placed for this verification, if it may hear it."""
        tag = routing_tag_of(sid)
        reply = self._reveal(
            keys=[keys.verification(tag, sid), keys.code(tag, sid)], args=[call_sid, max_reveals]
        )
        outcome, sealed, left = reply
        return RevealResult(outcome, sealed or None, int(left))

    def approve_by_call(
        self,
        *,
        tag: str,
        caller: str,
        called: str,
        call_sid: str,
        attestation: str,
        trusted: bool,
        remember_ms: int,
    ) -> tuple[str, str | None]:
        """A call from `caller` to our number `called`: (outcome, sid) per APPROVE_BY_CALL."""
        outcome, sid = self._approve_by_call(
            keys=[
                keys.pending(tag, caller, missed_call_scope(called)),
                keys.seen_call(tag, call_sid),
            ],
            args=[
                keys.number_prefix(tag),
                call_sid,
                attestation,
                "1" if trusted else "0",
                remember_ms,
            ],
        )
        return outcome, sid or None

    def track_expiry(self, verification: Verification) -> None:
        """Put a new verification on the expiry sweep's list."""
        self.redis.zadd(keys.expiries(), {verification.sid: verification.expires_at})

    def claim_expired(self, limit: int, lease_ms: int) -> list[str]:
        """Sids past their expiry on the sweep's list, taken for `lease_ms`."""
        return list(self._claim_expired(keys=[keys.expiries()], args=[limit, lease_ms]))

    def untrack_expiry(self, sid: str) -> None:
        self.redis.zrem(keys.expiries(), sid)

    def count_missed_call(self, outcome: str) -> None:
        """Count what calls to our missed-call numbers came to (strangers included)."""
        self.redis.hincrby(keys.missed_call_outcomes(), outcome, 1)

    def missed_call_outcomes(self) -> dict[str, int]:
        counts = self.redis.hgetall(keys.missed_call_outcomes())
        return {name: int(value) for name, value in counts.items()}

    def get(self, sid: str) -> Verification | None:
        """The verification, its status as of Redis' clock (the one the scripts use), so the
        API never calls pending what a check would find expired."""
        pipe = self.redis.pipeline(transaction=False)  # one round trip
        pipe.hgetall(keys.verification(routing_tag_of(sid), sid))
        pipe.time()
        data, (seconds, micros) = pipe.execute()
        return Verification.from_hash(data, seconds * 1000 + micros // 1000) if data else None

    def get_many(self, sids: list[str]) -> list[Verification | None]:
        """Several verifications as `get` reads them, in one round trip; None for those gone."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(keys.verification(routing_tag_of(sid), sid))
        pipe.time()
        *found, (seconds, micros) = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        return [Verification.from_hash(data, now_ms) if data else None for data in found]
