"""Send limits against toll fraud: sliding windows per number prefix and per API token (the
per-number window is counted with the verification itself, see VerificationStore), and the
console's sign-in limits.

Each window is one key with a tag of its own, so windows spread over a cluster's masters and
each is checked and counted in one Lua call on its slot. Windows are taken in turn; when one
refuses, the counts already made in the others are taken back, so a refused send does not use
up the others (a crash between the two leaves one extra count, which expires with its window).

Two kinds of window:
- exact (`Window(..., exact=True)`, the sign-in limits): a sorted set of each attempt's time,
  so one attempt can be taken back by name (`forget`) once it turns out not to count;
- counted (the fraud limits): sends per tenth of the window in a small hash, whatever the
  traffic (a busy prefix would otherwise keep thousands of entries). The window then slides by
  tenths: a send is counted for between 0.9 and 1 window, erring on the side of refusing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ivr import keys
from ivr.config import Rate
from ivr.store import RedisClient

_LUA_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Count an attempt in an exact window, if it has room.
# KEYS[1] sorted set of attempt times
# ARGV[1] a unique member for this attempt  ARGV[2] limit  ARGV[3] window ms
# Returns 0 when counted, else ms until the window has room.
EXACT_WINDOW = (
    _LUA_NOW
    + """
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)

# Count a send in a counted window (sends per tenth of the window), if it has room.
# KEYS[1] hash: start of a tenth (ms) -> sends in it
# ARGV[1] limit  ARGV[2] window ms
# Returns {0, the tenth it was counted in} when counted, else {ms until the window has room}.
COUNTED_WINDOW = (
    _LUA_NOW
    + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local tenth = math.max(1, math.floor(window / 10))
local current = now - now % tenth
local total, oldest = 0, nil
local stale = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local start = tonumber(flat[i])
  if start + window <= current then
    table.insert(stale, flat[i])
  else
    total = total + tonumber(flat[i + 1])
    if not oldest or start < oldest then oldest = start end
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
if total >= limit then return {math.max(1, oldest + window + tenth - now)} end
local field = string.format('%d', current)
redis.call('HINCRBY', KEYS[1], field, 1)
redis.call('PEXPIRE', KEYS[1], window + tenth)
return {0, field}
"""
)


@dataclass(frozen=True)
class Window:
    """One limit to apply: its scope ("prefix", "client", "console-sign-in-user"…), the value,
    the rate; `exact` keeps each attempt's time (see the module's docstring)."""

    scope: str
    value: str
    rate: Rate
    exact: bool = False

    @property
    def key(self) -> str:
        return (keys.send_window if self.exact else keys.send_counter)(self.scope, self.value)


@dataclass(frozen=True)
class Refusal:
    """Why a send was refused, and when to try again."""

    scope: str
    retry_after_seconds: int


@dataclass(frozen=True)
class Counted:
    """Where `acquire` counted an attempt, for `release` (the member or the tenth, per
    window)."""

    marks: tuple[tuple[Window, str], ...]


class SendLimiter:
    def __init__(self, client: RedisClient):
        self._client = client
        self._exact = client.register_script(EXACT_WINDOW)
        self._counted = client.register_script(COUNTED_WINDOW)

    def acquire(
        self, windows: list[Window], member: str | None = None
    ) -> tuple[Refusal | None, Counted]:
        """Count one attempt in every window, or in none: (the first refusal, or None; where
        it was counted, for `release`). `member` names an exact window's count (see forget)."""
        member = member or secrets.token_hex(8)
        marks: list[tuple[Window, str]] = []
        for window in windows:
            wait_ms, mark = self._count(window, member)
            if wait_ms:
                self.release(Counted(tuple(marks)))
                return Refusal(window.scope, max(1, -(-wait_ms // 1000))), Counted(())
            marks.append((window, mark))
        return None, Counted(tuple(marks))

    def _count(self, window: Window, member: str) -> tuple[int, str]:
        ms = window.rate.window_seconds * 1000
        if window.exact:
            wait = int(self._exact(keys=[window.key], args=[member, window.rate.limit, ms]))
            return wait, member
        reply = self._counted(keys=[window.key], args=[window.rate.limit, ms])
        return (0, str(reply[1])) if int(reply[0]) == 0 else (int(reply[0]), "")

    def release(self, counted: Counted) -> None:
        """Take back the counts of an `acquire` whose attempt did not happen (another limit, or
        the number's own, refused it). A tenth whose count reaches 0 is left to expire."""
        for window, mark in counted.marks:
            if window.exact:
                self._client.zrem(window.key, mark)
            else:
                self._client.hincrby(window.key, mark, -1)

    def forget(self, windows: list[Window], member: str) -> None:
        """Take back a count made by `acquire(windows, member)` in exact windows: an attempt
        that turned out not to be one to limit (a sign-in that succeeded)."""
        for window in windows:
            if window.exact:
                self._client.zrem(window.key, member)
