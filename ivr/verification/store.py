"""Verifications in Redis: every state change is one Lua script, so it is atomic.

Each script is a constant with a comment that names its KEYS and ARGV and what it returns (rq's
style). Every key a script touches is in its KEYS, and they all share one hash tag: the
number's bucket (see ivr.keys.BUCKETS), so each script runs on one Redis Cluster slot. Scripts
read the time with Redis' TIME, so expiry does not depend on the clocks of the hosts running
the app.

One key per pending verification (about 550 bytes with its share of the send log), so that
Redis keeps it as a small listpack:

- while pending, `keys.pending_verification(bucket, number_id, scope_tag)`: the number's one
  pending verification in that scope (an API client's, an IVR call's, flash calls', one
  missed-call number's), found from the number and the scope, or from the sid (which carries
  all three: see CodeSecrets.new_sid). Fields: sid, to, ch (channel), lo (locale),
  st (status), c / u / x (created, updated, expires: ms), k (wrong codes), n (send attempts),
  a<i> "channel|status|created|updated" (ms after c) with a<i>p (the carrier's sid) and a<i>e
  (its error), d (the code's HMAC) and e (its sealed copy), dl (first proof of delivery),
  r:<CallSid> (readings of the code to that call), q:<provider sid> (a status callback parked
  until its send settles), sc (the scope, when not the API's), sv (its Verify Service, when not
  the default: ivr.verification.services), fn (a name said instead of the Service's), and per
  channel ct (call_to), at (attestation), cl (code length), ma (max attempts).
- when it ends, the script that ends it removes the code and renames the hash to
  `keys.verification(bucket, sid)`, kept VERIFICATION_RETENTION_SECONDS more. One that expires
  unchecked keeps its (dead) code until something touches it: a check, the number's next
  verification, the expiry sweep (with events on), or the key's own expiry, code lifetime plus
  retention after it began.
- the per-number send limit: `keys.sends(bucket, generation)`, number id -> its recent sends,
  one hash per window-long generation of time (the limit reads the current and the previous).

A script that ends a verification also queues the event that announces it in the bucket's
outbox, in the same step (ivr.events reads it); and, given an Idempotency-Key, records the
outcome for a retry, in the same step too.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import redis

from ivr import keys
from ivr.config import Rate
from ivr.store import RedisClient, Scripts, hash_from_flat
from ivr.verification.codes import scope_tag
from ivr.verification.models import (
    Status,
    Verification,
    bucket_of,
    number_id_of,
    scope_tag_of,
)

# Lua snippets shared by the scripts below (string-prefixed to each script that needs them).
_LUA_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_s = string.format('%d', now)
"""

# Send attempts as a<i> fields, i from 0: "channel|status|created|updated", the times in ms
# after the verification's own c (short, so the hash stays a listpack).
_LUA_ATTEMPTS = """
local function attempt_of(vkey, i, c)
  local raw = redis.call('HGET', vkey, 'a' .. i)
  if not raw then return nil end
  local channel, status, created, updated = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {channel = channel, status = status, created = tonumber(created) + c,
          updated = tonumber(updated) + c}
end
local function save_attempt(vkey, i, a, c)
  redis.call('HSET', vkey, 'a' .. i, a.channel .. '|' .. a.status .. '|' ..
             string.format('%d', a.created - c) .. '|' .. string.format('%d', a.updated - c))
end
"""

# Which of a sid's two keys holds it: the pending one (while it is this sid's) or the ended one.
_LUA_LIVE = """
local function live(pkey, vkey, sid)
  if redis.call('HGET', pkey, 'sid') == sid then return pkey end
  if redis.call('EXISTS', vkey) == 1 then return vkey end
  return nil
end
"""

# Ends a pending verification: final status, its code gone, renamed to the ended record (kept
# for the retention); the event that announces the end queued in the bucket's outbox and the
# sweep's entry dropped, when events are on (event_id given). The snapshot never holds the
# code: it is gone first.
_LUA_FINISH = """
local function finish(pkey, vkey, sid, status, now_s, retention, due, ekey, expiries, event_id)
  redis.call('HSET', pkey, 'st', status, 'u', now_s)
  redis.call('HDEL', pkey, 'd', 'e')
  redis.call('RENAME', pkey, vkey)
  redis.call('PEXPIRE', vkey, retention)
  if event_id ~= '' then
    redis.call('HSET', ekey, 'type', 'verification.' .. status, 'sid', sid,
               'snapshot', cjson.encode(redis.call('HGETALL', vkey)), 'attempts', '0',
               'created_at', now_s)
    redis.call('ZADD', due, now_s, event_id)
    redis.call('ZREM', expiries, sid)
  end
end
"""

# Records, for an Idempotency-Key, what this request did (the web edge later replaces it with
# its whole answer). A key first used with other parameters answers 'conflict'.
_LUA_IDEMPOTENCY = """
local function seen_before(ikey, fingerprint)
  if fingerprint == '' then return nil end
  local seen = redis.call('GET', ikey)
  if not seen then return nil end
  if string.sub(seen, 1, #fingerprint + 1) ~= fingerprint .. '|' then return 'conflict' end
  return seen
end
local function remember(ikey, fingerprint, ttl, outcome, sid, status)
  if fingerprint ~= '' then
    redis.call('SET', ikey, fingerprint .. '|acted|' .. outcome .. '|' .. sid .. '|' .. status,
               'PX', ttl)
  end
end
"""

# Start a verification for a number, or add a send attempt to its pending one (a re-send keeps
# the code, the expiry and the count of wrong checks: NIST SP 800-63B). Each scope has its own
# pending verification (an IVR call's, flash calls', each missed-call number's, the API's), so
# they never re-send, nor cancel, one another. The per-number send limit (across scopes) is
# counted here, with the send it limits.
# KEYS[1] the pending verification of (number, scope)  KEYS[2] this generation's send log
# KEYS[3] the previous generation's  KEYS[4] idempotency record  KEYS[5] the bucket's expiry list
# KEYS[6] the bucket's sends in flight (an attempt whose first status is "requested" joins it)
# ARGV[1] new sid  ARGV[2] number (E.164)  ARGV[3] channel  ARGV[4] locale  ARGV[5] code HMAC
# ARGV[6] sealed code  ARGV[7] code lifetime ms  ARGV[8] retention ms: the record outlives the
# code by this much  ARGV[9] "resend" (a pending one takes a new attempt) or "fresh" (a pending
# one is left alone and nothing is created: a missed-call verification is never handed to a
# second asker)  ARGV[10] the first attempt's status  ARGV[11] JSON object of further fields
# (ct, cl, ma, sv)  ARGV[12] the scope ("" the API's)  ARGV[13] the number's id, and for a
# Verify Service other than the default ":" and its sid (the send log's field: per-number
# limits count per Service)
# ARGV[14] sends allowed per number  ARGV[15] its window ms  ARGV[16] idempotency fingerprint
# ("" none)  ARGV[17] its lifetime ms  ARGV[18] "1" to put a new one on the expiry list
# ARGV[19] "1" when a "taken" answer still counts as a send (the last missed-call number
# asked: a request that finds every one taken is what a flooder repeats)
# Returns {outcome, …}: {"created"|"resent", sid, attempt index (0-based), HGETALL of the
# verification, sealed code (the existing one on a re-send, so an SMS re-send carries the same
# code)}; {"taken", sid} (fresh, and one is pending); {"ended", sid} (the one there is past its
# expiry: end it, then ask again); {"clash"} (another scope has this scope's tag);
# {"limited", ms until the number may be sent to again}; {"repeat", the idempotency record}
# or {"conflict"}.
START_OR_RESEND = (
    _LUA_NOW
    + _LUA_ATTEMPTS
    + _LUA_IDEMPOTENCY
    + """
local seen = seen_before(KEYS[4], ARGV[16])
if seen == 'conflict' then return {'conflict'} end
if seen then return {'repeat', seen} end
local pkey = KEYS[1]
local v = redis.call('HMGET', pkey, 'sid', 'st', 'x', 'n', 'c', 'sc')
if v[1] and (v[6] or '') ~= ARGV[12] then return {'clash'} end
if v[1] and tonumber(v[3]) <= now then return {'ended', v[1]} end
local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  local text = ''
  repeat
    local d = n % 36
    text = string.sub(digits, d + 1, d + 1) .. text
    n = math.floor(n / 36)
  until n == 0
  return text
end
local window = tonumber(ARGV[15])
local mine = {}
local sends = 0
local oldest = nil
for k = 2, 3 do
  for t in string.gmatch(redis.call('HGET', KEYS[k], ARGV[13]) or '', '[^,]+') do
    local at = tonumber(t, 36)
    if at and at > now - window then
      sends = sends + 1
      if not oldest or at < oldest then oldest = at end
      if k == 2 then table.insert(mine, t) end
    end
  end
end
if sends >= tonumber(ARGV[14]) then return {'limited', oldest + window - now} end
local function count_send()
  table.insert(mine, b36(now))
  redis.call('HSET', KEYS[2], ARGV[13], table.concat(mine, ','))
  redis.call('PEXPIRE', KEYS[2], 2 * window + 60000)
end
local attempt = {channel = ARGV[3], status = ARGV[10], created = now, updated = now}
if v[1] then
  if ARGV[9] == 'fresh' then
    if ARGV[19] == '1' then count_send() end
    return {'taken', v[1]}
  end
  count_send()
  local existing, c = tonumber(v[4]), tonumber(v[5])
  save_attempt(pkey, existing, attempt, c)
  if ARGV[10] == 'requested' then redis.call('ZADD', KEYS[6], now, v[1] .. ':' .. existing) end
  redis.call('HSET', pkey, 'n', existing + 1, 'ch', ARGV[3], 'lo', ARGV[4], 'u', now_s)
  remember(KEYS[4], ARGV[16], ARGV[17], 'resent', v[1], 'pending')
  return {'resent', v[1], existing, redis.call('HGETALL', pkey), redis.call('HGET', pkey, 'e')}
end
count_send()
local expires = now + tonumber(ARGV[7])
redis.call('HSET', pkey, 'sid', ARGV[1], 'to', ARGV[2], 'ch', ARGV[3], 'lo', ARGV[4],
           'st', 'pending', 'c', now_s, 'x', string.format('%d', expires), 'n', '1',
           'd', ARGV[5], 'e', ARGV[6])
if ARGV[12] ~= '' then redis.call('HSET', pkey, 'sc', ARGV[12]) end
save_attempt(pkey, 0, attempt, now)
if ARGV[10] == 'requested' then redis.call('ZADD', KEYS[6], now, ARGV[1] .. ':0') end
for name, value in pairs(cjson.decode(ARGV[11])) do
  redis.call('HSET', pkey, name, tostring(value))
end
redis.call('PEXPIRE', pkey, tonumber(ARGV[7]) + tonumber(ARGV[8]))
if ARGV[18] == '1' then redis.call('ZADD', KEYS[5], expires, ARGV[1]) end
remember(KEYS[4], ARGV[16], ARGV[17], 'created', ARGV[1], 'pending')
return {'created', ARGV[1], 0, redis.call('HGETALL', pkey), ARGV[6]}
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
# first proof is noted in the verification (dl), so a verification counts as delivered once,
# whatever re-sends and repeated callbacks say. Returns 1 the first time.
_LUA_FIRST_DELIVERY = """
local PROOF = {sent = true, delivered = true, read = true, ['in-progress'] = true,
  completed = true}
local function first_delivery(vkey, channel, status, now_s)
  if not (PROOF[status] or (channel == 'flash_call' and status == 'ringing')) then return 0 end
  return redis.call('HSETNX', vkey, 'dl', now_s)
end
"""

# Record the carrier's answer to a send: its sid and status, or the error. A status callback
# that came before this answer (parked by RECORD_DELIVERY) is merged in. The verification fails
# only when every one of its sends has failed: a concurrent re-send may have got through.
# KEYS[1] the pending verification of the sid's number and scope  KEYS[2] the ended one
# KEYS[3] the bucket's outbox  KEYS[4] the event's hash  KEYS[5] the bucket's expiry list
# KEYS[6] the bucket's sends in flight (the attempt leaves it)
# ARGV[1] sid  ARGV[2] attempt index  ARGV[3] attempt status  ARGV[4] provider sid
# ARGV[5] error  ARGV[6] event id ("" when events are off)  ARGV[7] retention ms
# ARGV[8] "1": only an attempt still "requested" (the reconciliation; a late answer wins)
# Returns {the verification's status, 1 when the attempt's status (a parked one included) is
# its first proof of delivery, else 0}, or false when it is gone.
SETTLE_SEND = (
    _LUA_NOW
    + _LUA_ATTEMPTS
    + _LUA_LIVE
    + _LUA_FINISH
    + _LUA_RANK
    + _LUA_FIRST_DELIVERY
    + """
redis.call('ZREM', KEYS[6], ARGV[1] .. ':' .. ARGV[2])
local vkey = live(KEYS[1], KEYS[2], ARGV[1])
if not vkey then return false end
local current = redis.call('HMGET', vkey, 'st', 'n', 'ch', 'c')
local c = tonumber(current[4])
local index = tonumber(ARGV[2])
local attempt = attempt_of(vkey, index, c)
if not attempt then return {current[1], 0} end
if ARGV[8] == '1' and attempt.status ~= 'requested' then return {current[1], 0} end
attempt.status = ARGV[3]
attempt.updated = now
if ARGV[5] ~= '' then redis.call('HSET', vkey, 'a' .. index .. 'e', ARGV[5]) end
if ARGV[4] ~= '' then
  redis.call('HSET', vkey, 'a' .. index .. 'p', ARGV[4])
  local parked = redis.call('HGET', vkey, 'q:' .. ARGV[4])
  if parked then
    local status, err = string.match(parked, '^([^|]*)|(.*)$')
    if (RANK[status] or 0) >= (RANK[attempt.status] or 0) then
      attempt.status = status
      if err ~= '' then redis.call('HSET', vkey, 'a' .. index .. 'e', err) end
    end
    redis.call('HDEL', vkey, 'q:' .. ARGV[4])
  end
end
save_attempt(vkey, index, attempt, c)
redis.call('HSET', vkey, 'u', now_s)
if ARGV[3] == 'failed' and current[1] == 'pending' then
  for i = 0, tonumber(current[2]) - 1 do
    local other = attempt_of(vkey, i, c)
    if other and other.status ~= 'failed' then return {current[1], 0} end
  end
  finish(vkey, KEYS[2], ARGV[1], 'failed', now_s, ARGV[7], KEYS[3], KEYS[4], KEYS[5], ARGV[6])
  return {'failed', 0}
end
return {current[1], first_delivery(vkey, current[3], attempt.status, now_s)}
"""
)

# Apply a carrier status callback to the attempt with that provider sid, unless it is stale.
# A callback for a sid not recorded yet (it beat our own settle_send) is parked in the hash.
# KEYS[1] the pending verification of the sid's number and scope  KEYS[2] the ended one
# ARGV[1] sid  ARGV[2] provider sid  ARGV[3] new status  ARGV[4] error code ('' if none)
# Returns {1 when an attempt was updated, 2 when parked, 0 when stale or the hash is gone;
# 1 when the status (parked or not) is the verification's first proof of delivery, else 0}.
RECORD_DELIVERY = (
    _LUA_NOW
    + _LUA_ATTEMPTS
    + _LUA_LIVE
    + _LUA_RANK
    + _LUA_FIRST_DELIVERY
    + """
local vkey = live(KEYS[1], KEYS[2], ARGV[1])
if not vkey then return {0, 0} end
local current = redis.call('HMGET', vkey, 'n', 'ch', 'c')
local c = tonumber(current[3])
for i = 0, tonumber(current[1]) - 1 do
  if redis.call('HGET', vkey, 'a' .. i .. 'p') == ARGV[2] then
    local attempt = attempt_of(vkey, i, c)
    if (RANK[ARGV[3]] or 0) < (RANK[attempt.status] or 0) then return {0, 0} end
    attempt.status = ARGV[3]
    attempt.updated = now
    save_attempt(vkey, i, attempt, c)
    if ARGV[4] ~= '' then redis.call('HSET', vkey, 'a' .. i .. 'e', ARGV[4]) end
    redis.call('HSET', vkey, 'u', now_s)
    return {1, first_delivery(vkey, current[2], ARGV[3], now_s)}
  end
end
local field = 'q:' .. ARGV[2]
local parked = redis.call('HGET', vkey, field)
if parked then
  local status = string.match(parked, '^([^|]*)|')
  if (RANK[status] or 0) > (RANK[ARGV[3]] or 0) then return {0, 0} end
end
redis.call('HSET', vkey, field, ARGV[3] .. '|' .. ARGV[4])
return {2, first_delivery(vkey, current[2], ARGV[3], now_s)}
"""
)

# Check a code: expiry, the number's failure budget, the per-verification attempt limit and a
# constant-time comparison of HMACs, all at once; a right code approves exactly once.
# KEYS[1] the pending verification of the sid's number and scope  KEYS[2] the ended one
# KEYS[3] the number's wrong codes  KEYS[4] the bucket's outbox  KEYS[5] the event's hash
# KEYS[6] the bucket's expiry list  KEYS[7] idempotency record
# ARGV[1] sid  ARGV[2] HMAC of the submitted code  ARGV[3] max attempts (a verification's own
# ma field, when it has one, wins)  ARGV[4] failure budget count  ARGV[5] its window ms
# ARGV[6] the number the verification must be for ("" when the caller gave only a sid)
# ARGV[7] event id ("" events off)  ARGV[8] idempotency fingerprint ("" none)
# ARGV[9] its lifetime ms  ARGV[10] retention ms  ARGV[11] the Verify Service asking ("" the
# default): a verification of another Service is "not_found"
# Returns {outcome, sid, status, detail, number}: outcome is "approved", "wrong",
# "not_pending", "expired" (it was pending, and this check found it past its expiry),
# "throttled" (detail = ms until the budget allows a check), "not_found", "other_number" (the
# sid's verification is for another number than ARGV[6]: nothing of it is returned),
# "not_checkable" (a missed-call verification: the call approves it, no code does), "repeat"
# (detail: the idempotency record) or "conflict".
CHECK = (
    _LUA_NOW
    + _LUA_LIVE
    + _LUA_FINISH
    + _LUA_IDEMPOTENCY
    + """
local function same(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i))) end
  return diff == 0
end
local seen = seen_before(KEYS[7], ARGV[8])
if seen == 'conflict' then return {'conflict', '', '', '', ''} end
if seen then return {'repeat', '', '', seen, ''} end
local sid = ARGV[1]
local vkey = live(KEYS[1], KEYS[2], sid)
if not vkey then return {'not_found', '', '', 0, ''} end
local v = redis.call('HMGET', vkey, 'to', 'st', 'x', 'ch', 'ma', 'd', 'sv')
if (v[7] or '') ~= ARGV[11] then return {'not_found', '', '', 0, ''} end
if ARGV[6] ~= '' and v[1] ~= ARGV[6] then return {'other_number', '', '', 0, ''} end
local function answer(outcome, status, detail)
  remember(KEYS[7], ARGV[8], ARGV[9], outcome, sid, status)
  return {outcome, sid, status, detail, v[1]}
end
if v[4] == 'missed_call' then return {'not_checkable', sid, v[2], 0, v[1]} end
if v[2] ~= 'pending' then return answer('not_pending', v[2], 0) end
local function ends(status)
  finish(vkey, KEYS[2], sid, status, now_s, ARGV[10], KEYS[4], KEYS[5], KEYS[6], ARGV[7])
end
if now >= tonumber(v[3]) or not v[6] then
  ends('expired')
  return answer('expired', 'expired', 0)
end
local window = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {'throttled', sid, 'pending', tonumber(oldest[2]) + window - now, v[1]}
end
if same(v[6], ARGV[2]) then
  ends('approved')
  return answer('approved', 'approved', 0)
end
local attempts = redis.call('HINCRBY', vkey, 'k', 1)
redis.call('ZADD', KEYS[3], now, now_s .. ':' .. sid .. ':' .. attempts)
redis.call('PEXPIRE', KEYS[3], window)
if attempts >= tonumber(v[5] or ARGV[3]) then
  ends('max_attempts_reached')
  return answer('wrong', 'max_attempts_reached', attempts)
end
redis.call('HSET', vkey, 'u', now_s)
return answer('wrong', 'pending', attempts)
"""
)

# Cancel a pending verification; with ARGV[2] = "expire", only end it if it is past its expiry
# (the expiry sweep, and a new verification finding the old one expired); with "approve",
# approve it without a code (an app that verified the user another way: Twilio's update with
# Status=approved).
# KEYS[1] the pending verification of the sid's number and scope  KEYS[2] the ended one
# KEYS[3] the bucket's outbox  KEYS[4] the event's hash  KEYS[5] the bucket's expiry list
# ARGV[1] sid  ARGV[2] "cancel" | "expire" | "approve"  ARGV[3] event id ("" events off)
# ARGV[4] retention ms  ARGV[5] the Verify Service asking ("" the default, "*" any: the sweep)
# Returns {1, status} when this call ended it (canceled, or expired: it was past its expiry),
# {0, status} when it had already ended (or, expiring, is not due yet), or false for an
# unknown verification (another Service's included; to "approve", an IVR call's too).
CANCEL = (
    _LUA_NOW
    + _LUA_LIVE
    + _LUA_FINISH
    + """
local vkey = live(KEYS[1], KEYS[2], ARGV[1])
if not vkey then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return false
end
local v = redis.call('HMGET', vkey, 'st', 'x', 'sv', 'sc')
if ARGV[5] ~= '*' and (v[3] or '') ~= ARGV[5] then return false end
-- An IVR call's own code (scope: its CallSid) is approved by the caller's keys alone.
if ARGV[2] == 'approve' and string.sub(v[4] or '', 1, 2) == 'CA' then return false end
if v[1] ~= 'pending' then return {0, v[1]} end
local status = 'canceled'
if ARGV[2] == 'approve' then status = 'approved' end
if now >= tonumber(v[2]) then status = 'expired'
elseif ARGV[2] == 'expire' then return {0, 'pending'} end
finish(vkey, KEYS[2], ARGV[1], status, now_s, ARGV[4], KEYS[3], KEYS[4], KEYS[5], ARGV[3])
return {1, status}
"""
)

# Hand the sealed code to the call we placed for this verification, a bounded number of times.
# KEYS[1] the pending verification of the sid's number and scope
# ARGV[1] sid  ARGV[2] the CallSid asking  ARGV[3] most reveals per call
# Returns {outcome, sealed code or "", readings left}: outcome "ok", or why not: "gone" (not
# pending, expired, unknown), "stranger" (a call we did not place for it), "exhausted" (heard
# enough times). The call's language is in its URL, so nothing else is asked of Redis.
REVEAL = (
    _LUA_NOW
    + _LUA_ATTEMPTS
    + """
local v = redis.call('HMGET', KEYS[1], 'sid', 'st', 'x', 'n', 'c', 'e')
if v[1] ~= ARGV[1] or v[2] ~= 'pending' or now >= tonumber(v[3]) or not v[6] then
  return {'gone', '', 0}
end
local ours = false
for i = 0, tonumber(v[4]) - 1 do
  local attempt = attempt_of(KEYS[1], i, tonumber(v[5]))
  if attempt and attempt.channel == 'call'
     and redis.call('HGET', KEYS[1], 'a' .. i .. 'p') == ARGV[2] then ours = true end
end
if not ours then return {'stranger', '', 0} end
local heard = redis.call('HINCRBY', KEYS[1], 'r:' .. ARGV[2], 1)
if heard > tonumber(ARGV[3]) then return {'exhausted', '', 0} end
return {'ok', v[6], tonumber(ARGV[3]) - heard}
"""
)

# A call rang one of our missed-call numbers: approve the caller's missed-call verification
# that waits for a call to that very number, if the caller ID may be trusted. The call is
# rejected whatever this says. Each CallSid is taken once, whatever came of it: Twilio's
# signature carries no timestamp, so a captured request replayed later must not approve a later
# verification of the same phone.
# KEYS[1] the caller's pending verification for this number (scope missed-call:<number>)
# KEYS[2] the ended record of the sid the caller read there (any key of the bucket when none)
# KEYS[3] the CallSid's "seen" marker  KEYS[4] the bucket's outbox  KEYS[5] the event's hash
# KEYS[6] the bucket's expiry list
# ARGV[1] the sid read there ("" none)  ARGV[2] CallSid  ARGV[3] attestation to record (A, B,
# C, "failed" or "none")  ARGV[4] "1" when the caller ID may approve (policy passed), "0" when
# not  ARGV[5] how long a CallSid is remembered, ms  ARGV[6] event id ("" events off)
# ARGV[7] retention ms
# Returns {outcome, sid}: outcome "approved", "refused" (caller ID not trusted: the verification
# stays pending, so a spoofer cannot spoil the real user's), "expired", "replay" (this CallSid
# came before), "nothing_pending" (nothing waits for a call from this caller to this number)
# or "moved" (another verification is there now: read it again; nothing was taken).
APPROVE_BY_CALL = (
    _LUA_NOW
    + _LUA_ATTEMPTS
    + _LUA_FINISH
    + """
local pkey = KEYS[1]
local v = redis.call('HMGET', pkey, 'sid', 'st', 'x', 'ch', 'n', 'c')
if (v[1] or '') ~= ARGV[1] then return {'moved', ''} end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then return {'replay', ''} end
if not v[1] or v[4] ~= 'missed_call' or v[2] ~= 'pending' then return {'nothing_pending', ''} end
local sid = v[1]
local function ends(status)
  finish(pkey, KEYS[2], sid, status, now_s, ARGV[7], KEYS[4], KEYS[5], KEYS[6], ARGV[6])
end
if now >= tonumber(v[3]) then
  ends('expired')
  return {'expired', sid}
end
local last = tonumber(v[5]) - 1
local attempt = attempt_of(pkey, last, tonumber(v[6]))
attempt.updated = now
attempt.status = ARGV[4] == '1' and 'received' or 'refused'
save_attempt(pkey, last, attempt, tonumber(v[6]))
redis.call('HSET', pkey, 'a' .. last .. 'p', ARGV[2], 'at', ARGV[3], 'u', now_s)
if ARGV[4] ~= '1' then return {'refused', sid} end
ends('approved')
return {'approved', sid}
"""
)

# Claim an Idempotency-Key for this request's parameters and bucket, unless it was claimed
# (SET NX GET, which the embedded Redis 6.2 refuses).
# KEYS[1] the key's index  ARGV[1] "fingerprint|bucket"  ARGV[2] lifetime ms
# Returns what the first claim holds, or false when this one is the first.
CLAIM_IDEMPOTENCY_KEY = """
local first = redis.call('GET', KEYS[1])
if not first then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return first
"""

# A verification (the pending one while it is this sid's, else the ended one) and Redis' clock,
# in one round trip; the code is never returned.
# KEYS[1] the pending verification of the sid's number and scope  KEYS[2] the ended one
# ARGV[1] sid
# Returns {seconds, microseconds, HGETALL of the hash without d and e (empty when gone)}.
READ = (
    _LUA_LIVE
    + """
local clock = redis.call('TIME')
local vkey = live(KEYS[1], KEYS[2], ARGV[1])
local fields = {}
if vkey then
  local flat = redis.call('HGETALL', vkey)
  for i = 1, #flat, 2 do
    if flat[i] ~= 'd' and flat[i] ~= 'e' then
      table.insert(fields, flat[i])
      table.insert(fields, flat[i + 1])
    end
  end
end
return {clock[1], clock[2], fields}
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


@dataclass
class Idempotency:
    """An Idempotency-Key as the store keeps it: under which digest (of the client, the
    operation and the key), the fingerprint of the request's parameters, and where: the
    bucket of the number or sid the request acts on (the core fills it in), so the script that
    acts records what it did in the same step."""

    digest: str
    fingerprint: str
    ttl_ms: int = 24 * 3600 * 1000
    bucket: str | None = None

    @property
    def key(self) -> str:
        assert self.bucket is not None, "the bucket is known once the number or sid is"
        return keys.idempotency(self.bucket, self.digest)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was first used with other parameters."""


class Repeated(Exception):
    """A request with this Idempotency-Key came before: `record` is what it left (what the
    script did, or the web edge's whole answer: see stored_answer)."""

    def __init__(self, record: str):
        super().__init__("a request with this Idempotency-Key came before")
        self.record = record


class SendLimited(Exception):
    """The number's send limit is reached: `retry_after_ms` until it has room."""

    def __init__(self, retry_after_ms: int):
        super().__init__("the number's send limit is reached")
        self.retry_after_ms = retry_after_ms


def missed_call_scope(called: str) -> str:
    """The pointer scope of a missed-call verification that waits for a call to `called`: one
    per (phone, our number), so each pending one answers to exactly one call."""
    return f"missed-call:{called}"


def _now_ms() -> int:
    return int(time.time() * 1000)


_RETRIES = 5  # a pending verification that changes under us this often is hammered: give up


class PointerMoved(redis.RedisError):
    """A number's pending verification kept changing between our read and our script:
    answered as Redis being busy (503), never as a result."""


class ScopeClash(redis.RedisError):
    """Two scopes of one number share a scope tag (about one in four billion): answered as
    Redis being busy (503); the next call's scope differs."""


class VerificationStore:
    """Typed access to verification state; one Redis round trip per method, two where a sid
    must be read first (a check by number, a missed call)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        scripts: Scripts | None = None,
        events: bool = False,
        retention_ms: int = 86_400_000,
    ):
        self.redis = client
        self.scripts = scripts or Scripts(client)
        self.events = events  # ends are announced: queue an event with each, sweep expiries
        self.retention_ms = retention_ms  # how long an ended verification stays readable
        self._start = client.register_script(START_OR_RESEND)
        self._settle = client.register_script(SETTLE_SEND)
        self._delivery = client.register_script(RECORD_DELIVERY)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)
        self._reveal = client.register_script(REVEAL)
        self._approve_by_call = client.register_script(APPROVE_BY_CALL)
        self._read = client.register_script(READ)
        self._claim_key = client.register_script(CLAIM_IDEMPOTENCY_KEY)

    # -- keys ----------------------------------------------------------------------------------

    @staticmethod
    def _keys_of(sid: str) -> tuple[str, str, str]:
        """A sid's bucket, its pending key (while it is this sid's) and its ended record."""
        bucket = bucket_of(sid)
        pending = keys.pending_verification(bucket, number_id_of(sid), scope_tag_of(sid))
        return bucket, pending, keys.verification(bucket, sid)

    def _event_keys(self, bucket: str) -> tuple[list[str], str]:
        """The outbox keys an ending script is given, and the event id ("" when events are
        off: the script then queues nothing)."""
        event_id = "EV" + secrets.token_hex(16) if self.events else ""
        shard = f"v{bucket}"
        return [
            keys.events_due(shard),
            keys.event(shard, event_id or "none"),
            keys.expiries(bucket),
        ], event_id

    # -- starting ------------------------------------------------------------------------------

    def start_or_resend(
        self,
        *,
        new_sid: str,
        to: str,
        channel: str,
        locale: str,
        digest: str,
        sealed: str,
        ttl_ms: int,
        retention_ms: int,
        send_limit: Rate,
        scope: str | None = None,
        resend: bool = True,
        first_status: str = "requested",
        fields: dict[str, str | int] | None = None,
        idempotency: Idempotency | None = None,
        count_if_taken: bool = False,
        limit_scope: str = "",
    ) -> StartResult | None:
        """Create a verification, or add an attempt to the pending one of the number in
        `scope` (new_sid, from CodeSecrets.new_sid, names both). Without `resend`, None when
        one is pending. `fields`: what a new verification keeps besides the common ones (ct,
        cl, ma, sv). `limit_scope`: the Verify Service the per-number limit counts in ("" the
        default). Raises SendLimited, Repeated or IdempotencyConflict."""
        bucket, pending, _ended = self._keys_of(new_sid)
        window_ms = send_limit.window_seconds * 1000
        generation = _now_ms() // window_ms
        idempotency_key = idempotency.key if idempotency else keys.idempotency(bucket, "none")
        for _ in range(_RETRIES):
            reply = self.scripts.run(
                self._start,
                [
                    pending,
                    keys.sends(bucket, generation),
                    keys.sends(bucket, generation - 1),
                    idempotency_key,
                    keys.expiries(bucket),
                    keys.sends_in_flight(bucket),
                ],
                [
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
                    scope or "",
                    number_id_of(new_sid) + (f":{limit_scope}" if limit_scope else ""),
                    send_limit.limit,
                    window_ms,
                    idempotency.fingerprint if idempotency else "",
                    idempotency.ttl_ms if idempotency else 0,
                    "1" if self.events else "0",
                    "1" if count_if_taken else "0",
                ],
                durable=True,  # a send counted against the limit
            )
            outcome = reply[0]
            if outcome == "ended":  # the one there expired unchecked: end it, then ours
                self.cancel(reply[1], only_if_expired=True, retention_ms=retention_ms)
                continue
            if outcome == "taken":
                return None
            if outcome == "limited":
                raise SendLimited(int(reply[1]))
            if outcome == "repeat":
                raise Repeated(reply[1])
            if outcome == "conflict":
                raise IdempotencyConflict()
            if outcome == "clash":
                raise ScopeClash("two scopes of this number share a tag")
            _outcome, sid, index, flat, sealed_code = reply
            verification = Verification.from_hash(sid, hash_from_flat(flat), _now_ms())
            return StartResult(verification, int(index), outcome == "created", sealed_code)
        raise PointerMoved("the number's pending verification kept changing")

    # -- the carrier's answers -----------------------------------------------------------------

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
        only_if_requested: bool = False,
    ) -> Settled:
        """`settle_send`, telling also whether the answer is the first proof of delivery.
        `only_if_requested`: change nothing unless the attempt is still "requested"."""
        bucket, pending, ended = self._keys_of(sid)
        event_keys, event_id = self._event_keys(bucket)
        reply = self.scripts.run(
            self._settle,
            [pending, ended, *event_keys, keys.sends_in_flight(bucket)],
            [
                sid,
                attempt_index,
                status,
                provider_sid,
                error,
                event_id,
                self.retention_ms,
                "1" if only_if_requested else "0",
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
        _bucket, pending, ended = self._keys_of(sid)
        applied, first = self.scripts.run(
            self._delivery, [pending, ended], [sid, provider_sid, status, error]
        )
        return DeliveryUpdate(bool(applied), bool(first))

    # -- checking ------------------------------------------------------------------------------

    def check(
        self,
        *,
        digest: str,
        max_attempts: int,
        failure_budget: Rate,
        sid: str | None = None,
        number: tuple[str, str] | None = None,
        to: str | None = None,
        scope: str | None = None,
        idempotency: Idempotency | None = None,
        service: str = "",
    ) -> CheckResult:
        """Check a code against the verification `sid` (which must be for `to`, when given), or
        the pending one of the number (`number` = its bucket and id, `to` its E.164) in
        `scope`. `service`: the Verify Service asking ("" the default); another Service's
        verification is "not_found". Raises Repeated or IdempotencyConflict."""
        if sid is None:
            if number is None or to is None:
                raise ValueError("check needs a sid, or a number and its E.164")
            sid = self.redis.hget(keys.pending_verification(*number, scope_tag(scope)), "sid")
            if not sid:
                return CheckResult("not_found", None, None)
        bucket, pending, ended = self._keys_of(sid)
        event_keys, event_id = self._event_keys(bucket)
        outcome, found_sid, status, detail, stored_to = self.scripts.run(
            self._check,
            [
                pending,
                ended,
                keys.check_failures(bucket, number_id_of(sid)),
                *event_keys,
                idempotency.key if idempotency else keys.idempotency(bucket, "none"),
            ],
            [
                sid,
                digest,
                max_attempts,
                failure_budget.limit,
                failure_budget.window_seconds * 1000,
                to or "",
                event_id,
                idempotency.fingerprint if idempotency else "",
                idempotency.ttl_ms if idempotency else 0,
                self.retention_ms,
                service,
            ],
            durable=True,  # an approval, a counted wrong code
        )
        if outcome == "repeat":
            raise Repeated(detail)
        if outcome == "conflict":
            raise IdempotencyConflict()
        return CheckResult(
            outcome=outcome,
            sid=found_sid or None,
            status=Status(status) if status else None,
            to=stored_to or None,
            attempts=int(detail) if outcome == "wrong" else 0,
            retry_after_ms=int(detail) if outcome == "throttled" else 0,
        )

    def cancel(
        self,
        sid: str,
        *,
        only_if_expired: bool = False,
        retention_ms: int | None = None,
        service: str = "*",
        approve: bool = False,
    ) -> tuple[bool, Status] | None:
        """Cancel if pending (or, `only_if_expired`, end it only if past its expiry): (whether
        this call ended it, status after); None if unknown. `service`: only a verification of
        this Verify Service ("" the default; "*", any: the app's own ends). `approve`:
        approve it instead, without a code."""
        bucket, pending, ended = self._keys_of(sid)
        event_keys, event_id = self._event_keys(bucket)
        reply = self.scripts.run(
            self._cancel,
            [pending, ended, *event_keys],
            [
                sid,
                "expire" if only_if_expired else ("approve" if approve else "cancel"),
                event_id,
                retention_ms or self.retention_ms,
                service,
            ],
            durable=True,
        )
        return (bool(reply[0]), Status(reply[1])) if reply else None

    def reveal(self, sid: str, call_sid: str, max_reveals: int) -> RevealResult:
        """The sealed code for a call we placed for this verification, if it may hear it."""
        _bucket, pending, _ended = self._keys_of(sid)
        outcome, sealed, left = self.scripts.run(
            self._reveal,
            [pending],
            [sid, call_sid, max_reveals],
            durable=True,  # a reading counted against the call's allowance
        )
        return RevealResult(outcome, sealed or None, int(left))

    def approve_by_call(
        self,
        *,
        number: tuple[str, str],
        called: str,
        call_sid: str,
        attestation: str,
        trusted: bool,
        remember_ms: int,
    ) -> tuple[str, str | None]:
        """A call from the number (`number` = its bucket and id) to our number `called`:
        (outcome, sid) per APPROVE_BY_CALL."""
        bucket, number_id = number
        pending = keys.pending_verification(bucket, number_id, scope_tag(missed_call_scope(called)))
        for _ in range(_RETRIES):
            current = self.redis.hget(pending, "sid") or ""
            event_keys, event_id = self._event_keys(bucket)
            outcome, sid = self.scripts.run(
                self._approve_by_call,
                [
                    pending,
                    keys.verification(bucket, current) if current else pending,
                    keys.seen_call(bucket, call_sid),
                    *event_keys,
                ],
                [
                    current,
                    call_sid,
                    attestation,
                    "1" if trusted else "0",
                    remember_ms,
                    event_id,
                    self.retention_ms,
                ],
                durable=True,
            )
            if outcome != "moved":
                return outcome, sid or None
        raise PointerMoved("the number's pending verification kept changing")

    # -- Idempotency-Key records -----------------------------------------------------------------

    def idempotent_record(self, idempotency: Idempotency) -> str | None:
        """What an earlier request with this key left (see Repeated), or None when none acted
        yet (this one may); IdempotencyConflict when the key came with other parameters.

        The key is first claimed where only the key decides (its index), with this request's
        fingerprint and bucket: another request under the key, with another number, would
        look in another bucket and never see the first one's record."""
        mark = f"{idempotency.fingerprint}|{idempotency.bucket}"
        first = self._claim_key(
            keys=[keys.idempotency_index(idempotency.digest)], args=[mark, idempotency.ttl_ms]
        )
        if first is not None and first != mark:
            raise IdempotencyConflict()
        record = self.redis.get(idempotency.key) if first is not None else None
        if record is not None and not record.startswith(idempotency.fingerprint + "|"):
            raise IdempotencyConflict()
        return record

    def remember_answer(self, idempotency: Idempotency, status: int, body: str) -> None:
        """Replace what the script recorded with the whole answer, for a retry to get it as it
        was; only where a script acted (XX), within the record's lifetime (KEEPTTL)."""
        record = f"{idempotency.fingerprint}|answer|{status}|{body}"
        self.redis.set(idempotency.key, record, xx=True, keepttl=True)

    # -- the expiry sweep (only while events are announced) ------------------------------------

    def due_expiries(self, buckets: list[str], limit: int) -> list[str]:
        """Sids past their expiry on those buckets' lists, at most `limit` per bucket; one
        round trip per master. Ending them is `cancel(sid, only_if_expired=True)`, which also
        takes them off the list: two sweeps finding the same sid end it once."""
        now = _now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for bucket in buckets:
            pipe.zrangebyscore(keys.expiries(bucket), "-inf", now, start=0, num=limit)
        return [sid for found in pipe.execute() for sid in found]

    def stale_sends(
        self, buckets: list[str], older_than_ms: int, limit: int
    ) -> list[tuple[str, int]]:
        """(sid, attempt index) of sends asked longer than `older_than_ms` ago and never settled
        by the carrier's answer, at most `limit` per bucket; one round trip per master."""
        before = _now_ms() - older_than_ms
        pipe = self.redis.pipeline(transaction=False)
        for bucket in buckets:
            pipe.zrangebyscore(keys.sends_in_flight(bucket), "-inf", before, start=0, num=limit)
        found = []
        for member in (m for members in pipe.execute() for m in members):
            sid, _, index = member.rpartition(":")
            if index.isdigit():
                found.append((sid, int(index)))
        return found

    def last_wrong_code(self, bucket: str, number_id: str) -> str | None:
        """The sid of the verification the number's latest wrong code went to, while the
        failure budget's window remembers it."""
        newest = self.redis.zrevrange(keys.check_failures(bucket, number_id), 0, 0)
        return newest[0].split(":")[1] if newest else None

    # -- reading -------------------------------------------------------------------------------

    def get(self, sid: str) -> Verification | None:
        """The verification, its status as of Redis' clock (the one the scripts use), so the
        API never calls pending what a check would find expired."""
        _bucket, pending, ended = self._keys_of(sid)
        seconds, micros, flat = self.scripts.run(self._read, [pending, ended], [sid])
        if not flat:
            return None
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return Verification.from_hash(sid, hash_from_flat(flat), now_ms)

    def get_many(self, sids: list[str]) -> list[Verification | None]:
        """Several verifications as `get` reads them: one round trip per master for the data,
        one for Redis' clock."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            _bucket, pending, ended = self._keys_of(sid)
            pipe.hgetall(pending)
            pipe.hgetall(ended)
        found = pipe.execute()
        seconds, micros = self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        read: list[Verification | None] = []
        for index, sid in enumerate(sids):
            pending, ended = found[2 * index], found[2 * index + 1]
            data = pending if pending.get("sid") == sid else ended
            read.append(Verification.from_hash(sid, data, now_ms) if data else None)
        return read

    # -- what calls to our missed-call numbers came to ------------------------------------------

    def count_missed_call(self, outcome: str) -> None:
        """Count what calls to our missed-call numbers came to (strangers included), in a random
        shard of the counter."""
        shard = secrets.randbelow(keys.MISSED_CALL_SHARDS)
        self.redis.hincrby(keys.missed_call_outcomes(shard), outcome, 1)

    def missed_call_outcomes(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.MISSED_CALL_SHARDS):
            pipe.hgetall(keys.missed_call_outcomes(shard))
        pipe.hgetall(keys.legacy_missed_call_outcomes())
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + int(value)
        return totals


def stored_answer(record: str) -> tuple[str, list[str]]:
    """An idempotency record split: ("acted", [outcome, sid, status]) as a script left it, or
    ("answer", [HTTP status, body]) as the web edge left it (see Repeated)."""
    _fingerprint, kind, rest = record.split("|", 2)
    return kind, rest.split("|", 2 if kind == "acted" else 1)
