"""Send limits against toll fraud: sliding windows per number, per number prefix, per API token.

All windows are checked and, only if every one has room, counted, in one Lua call: a send that
one window refuses does not use up the others.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis

from ivr import keys
from ivr.config import Rate

# Count a send in every window, or in none.
# KEYS[1..n] sorted sets of send times, one per window (all tagged {limits}: one cluster slot)
# ARGV[1] a unique member for this send; then per key: ARGV[2i] limit, ARGV[2i+1] window ms
# Returns {0, 0} when counted, else {i, ms until window i has room} for the first full window.
SEND_WINDOWS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {i, tonumber(oldest[2]) + window - now}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return {0, 0}
"""


@dataclass(frozen=True)
class Window:
    """One limit to apply: its scope ("number", "prefix", "token"), the value, the rate."""

    scope: str
    value: str
    rate: Rate


@dataclass(frozen=True)
class Refusal:
    """Why a send was refused, and when to try again."""

    scope: str
    retry_after_seconds: int


class SendLimiter:
    def __init__(self, client: redis.Redis):
        self._client = client
        self._script = client.register_script(SEND_WINDOWS)

    def acquire(self, windows: list[Window], member: str | None = None) -> Refusal | None:
        """Count one send in every window; a Refusal when any window is full. `member` names
        the count, for `forget`."""
        args: list[object] = [member or secrets.token_hex(8)]
        for window in windows:
            args += [window.rate.limit, window.rate.window_seconds * 1000]
        index, wait_ms = self._script(
            keys=[keys.send_window(w.scope, w.value) for w in windows], args=args
        )
        if index == 0:
            return None
        return Refusal(windows[index - 1].scope, max(1, -(-int(wait_ms) // 1000)))

    def forget(self, windows: list[Window], member: str) -> None:
        """Take back a count made by `acquire(windows, member)`: an attempt that turned out
        not to be one to limit (a sign-in that succeeded)."""
        self._client.zrem(keys.send_window(windows[0].scope, windows[0].value), member)
        for window in windows[1:]:
            self._client.zrem(keys.send_window(window.scope, window.value), member)
