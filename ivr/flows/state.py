"""Where each call is in its flow, in Redis keyed by CallSid, so any worker on any host
continues it.

Each saved turn bumps a step number, and the <Gather> action URL of that turn carries it. A
request whose step is not the current one (a replay, or a late duplicate) changes nothing: the
engine answers it by repeating the current question. Saving is a compare-and-set on the step in
one Lua call, so two concurrent requests for one call cannot both advance it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import redis

from ivr import keys

_CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")


def is_call_sid(value: object) -> bool:
    """True for a Twilio CallSid (CA + 32 hex digits): what call state is keyed by."""
    return isinstance(value, str) and _CALL_SID.fullmatch(value) is not None


@dataclass
class CallState:
    """A call's progress. `here` holds what belongs to the current node only (retries, the
    code sent by an authenticate node…); it is emptied whenever the call moves on."""

    flow: str
    node: str
    locale: str
    caller: str = ""  # the caller ID as Twilio sent it (E.164 when it is a number)
    step: int = 0
    customer_id: str | None = None
    customer_name: str | None = None
    customer_phone: str | None = None  # the phone on file: where codes go
    customer_sms: bool = True  # False when the record says the phone takes no SMS
    identified_by: str | None = None  # caller_id | account_number
    verified: bool = False
    auth_method: str | None = None  # sms_otp | voice_otp
    variables: dict[str, str] = field(default_factory=dict)
    here: dict[str, Any] = field(default_factory=dict)

    def move_to(self, node: str) -> None:
        self.node = node
        self.here = {}

    def count(self, name: str) -> int:
        """Add one to a per-node counter (failures, timeouts…); the new value."""
        self.here[name] = int(self.here.get(name, 0)) + 1
        return self.here[name]

    def to_json(self) -> str:
        # vars(), not dataclasses.asdict: asdict deep-copies every value, a third of a turn's
        # Python time. The fields hold only JSON values.
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CallState:
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def summary(self) -> dict[str, Any]:
        """What an agent desktop may read about the call (GET /v1/calls/{CallSid})."""
        return {
            "flow": self.flow,
            "node": self.node,
            "language": self.locale,
            "verified": self.verified,
            "customer_id": self.customer_id,
            "customer_name": self.customer_name,
            "identified_by": self.identified_by,
            "auth_method": self.auth_method,
        }


# Save a call's state if nobody else advanced it since it was read.
# KEYS[1] the call's state hash
# ARGV[1] the step the caller read ("" when creating: the call must have no state yet)
# ARGV[2] the new step   ARGV[3] the new state JSON   ARGV[4] time to live, ms
# Returns 1 when saved, 0 when the step had moved on (or the call already had state).
SAVE_STATE = """
local current = redis.call('HGET', KEYS[1], 'step')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'state', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class CallStateStore:
    """Typed access to call state; one Redis round trip per method."""

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl_ms = ttl_seconds * 1000
        self._save = client.register_script(SAVE_STATE)

    def load(self, call_sid: str) -> CallState | None:
        step, text = self.redis.hmget(keys.call_state(call_sid), "step", "state")
        if step is None or text is None:
            return None
        state = CallState.from_json(text)
        state.step = int(step)
        return state

    def save(self, call_sid: str, state: CallState, *, read_step: int | None) -> bool:
        """Store `state` as the next step; False if the call moved on meanwhile (or, when
        `read_step` is None, if it already had state)."""
        new_step = (read_step or 0) + 1
        state.step = new_step
        saved = self._save(
            keys=[keys.call_state(call_sid)],
            args=["" if read_step is None else read_step, new_step, state.to_json(), self.ttl_ms],
        )
        return bool(saved)
