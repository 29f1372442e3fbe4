"""Unique names across cluster slots: a claim in an index, believed only when its record agrees.

A feature spread over slots (customers and their phones, API tokens and their names) cannot
change a record and its index entry in one script. Instead every change is ordered:

1. claim the unique value (a phone, a token name) in its index shard: the entry names the
   owner and when it was claimed (`owner|ms`);
2. write the owner's record in its own shard, the claim's value kept in the record;
3. release what the record no longer holds, only if the entry is still that very claim.

A reader believes an index entry only when the record it names agrees (holds that value). A
claim whose record disagrees is either in flight (younger than CLAIM_GRACE_MS: the value is
taken) or left by a crash between two steps (older: anyone may take it over, atomically, by
naming the exact entry it replaces). A writer that took longer than half the grace between
its claim and its record gives up (ClaimLapsed) rather than write a record whose claim may
have been taken over meanwhile.

`queue_script` runs a registered script inside a pipeline of either client: redis-py's
ClusterPipeline refuses EVALSHA, so there the script's text goes with EVAL (a few hundred
bytes a command: only batches, such as an import, pipeline scripts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import ClusterPipeline
from redis.commands.core import Script

CLAIM_GRACE_MS = 60_000  # a claim younger than this whose record disagrees is in flight


class ClaimLapsed(redis.RedisError):
    """A change took so long between its claim and its record that the claim may be gone;
    nothing was written to the record (the caller may simply try again)."""


# Claim one value for an owner: free, already the owner's, or exactly the entry to replace.
# KEYS[1] the index shard (hash value -> "owner|claimed_at ms")
# ARGV[1] the value (a phone, a token name)  ARGV[2] owner  ARGV[3] now (ms)
# ARGV[4] the entry this claim may replace ("" = none: only a free or own value)
# Returns {1, the entry written} or {0, the entry another owner holds}.
CLAIM = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
local own = held and (held == ARGV[2] or string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. '|')
if held and not own and held ~= ARGV[4] then return {0, held} end
local entry = ARGV[2] .. '|' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], entry)
return {1, entry}
"""

# Release a value, only if its entry is still the one given (a newer claim is left alone).
# KEYS[1] the index shard
# ARGV[1] the value  ARGV[2] the entry expected
# Returns 1 when released, else 0.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Claim:
    """An index entry: who claimed the value, and when (0 for an entry from before claims)."""

    owner: str
    claimed_at: int
    entry: str

    @classmethod
    def parse(cls, entry: str) -> Claim:
        owner, _, at = entry.partition("|")
        return cls(owner, int(at) if at.isdigit() else 0, entry)

    def in_flight(self, now_ms: int) -> bool:
        """True while the owner may still be between its claim and its record."""
        return now_ms - self.claimed_at < CLAIM_GRACE_MS


def now_ms() -> int:
    return int(time.time() * 1000)


def check_not_lapsed(claimed_at: int, clock_ms: int) -> None:
    """Raise ClaimLapsed when a writer is too late to write the record of its claim."""
    if clock_ms - claimed_at > CLAIM_GRACE_MS // 2:
        raise ClaimLapsed("the claim is too old to write its record; try again")


def queue_script(pipe: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue `script` on `pipe`, a pipeline of either client (the cluster's refuses EVALSHA;
    redis-py's own loads the script before the pipeline runs)."""
    if isinstance(pipe, ClusterPipeline):
        # Its eval() method is stubbed out too; the command itself is routed by its keys.
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    else:
        script(keys=list(keys), args=list(args), client=pipe)
