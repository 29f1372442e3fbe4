"""Where each call is in its flow, in Redis keyed by CallSid, so any worker on any host
continues it.

Each saved turn bumps a step number and draws a new version (the step plus random bits); the
<Gather> action URL of that turn carries the step. Saving is a compare-and-set on the version in
one Lua call, so two concurrent requests for one call cannot both advance it, and a request for
a step that is not the current one (a replay, a late duplicate) changes nothing.

One Redis round trip per turn: the action URL also carries the state it was asked from, sealed
(AES-GCM, bound to the CallSid), so the next turn need not read Redis before it saves. Redis
stays the truth: the save only succeeds if that sealed state is still the current version, and
the engine confirms it is before anything with a side effect (a lookup, a code sent or checked).
A state too big for a URL, or a token that does not open, costs one read instead.
"""

from __future__ import annotations

import base64
import json
import secrets
import zlib
from dataclasses import dataclass, field, fields
from typing import Any

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.cluster import RedisCluster

from ivr import keys
from ivr.store import RedisClient
from ivr.verification.codes import derive_key

_NONCE_BYTES = 12
# Sealed states longer than this are not put in URLs (the next turn reads Redis instead): with a
# public base URL of up to ~100 characters, an action URL stays under 512, the shortest limit
# Twilio states for a callback URL anywhere in its APIs.
MAX_SEALED_CHARS = 384
# Raw deflate with a 512-byte window: a state is a few hundred bytes, and zlib's default 32 KiB
# window costs ten times more to set up than compressing them does.
_WINDOW_BITS = -9


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, _WINDOW_BITS, 1)
    return packer.compress(data) + packer.flush()


@dataclass
class CallState:
    """A call's progress. `here` holds what belongs to the current node only (retries, the
    code sent by an authenticate node…); it is emptied whenever the call moves on."""

    flow: str
    node: str
    locale: str
    flow_revision: str = ""  # the flow version the call runs on, to its end ("" = the live one)
    prompts_revision: str = ""  # a simulator's trial of the prompt drafts ("" = the live ones)
    simulated: bool = False  # a console simulator's call: codes go to the simulated phone
    caller: str = ""  # the caller ID as Twilio sent it (E.164 when it is a number)
    step: int = 0
    customer_id: str | None = None
    customer_name: str | None = None
    customer_phone: str | None = None  # the phone on file: where codes go
    customer_sms: bool = True  # False when the record says the phone takes no SMS
    started_at: int = 0  # ms since the epoch, when the call reached us
    updated_at: int = 0  # ms, the last turn
    outcome: str = ""  # how the flow's part ended: agent, transfer, hangup, error ("" running)
    identified_by: str | None = None  # caller_id | account_number
    verified: bool = False
    auth_method: str | None = None  # sms_otp | voice_otp
    variables: dict[str, str] = field(default_factory=dict)
    here: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # "<step>.<random>", drawn at each save: what the compare-and-set compares

    def move_to(self, node: str) -> None:
        self.node = node
        self.here = {}

    def count(self, name: str) -> int:
        """Add one to a per-node counter (failures, timeouts…); the new value."""
        self.here[name] = int(self.here.get(name, 0)) + 1
        return self.here[name]

    def to_json(self) -> str:
        """Only the fields that differ from their defaults: short enough to seal into a URL.
        vars(), not dataclasses.asdict: asdict deep-copies every value, a third of a turn's
        Python time. The fields hold only JSON values."""
        return json.dumps(
            {name: value for name, value in vars(self).items() if value != _DEFAULTS.get(name)},
            separators=(",", ":"),
        )

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


_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if callable(f.default_factory) else f.default
    for f in fields(CallState)
}


# Save a call's state if nobody else advanced it since it was read, and add the turn to the
# call's journey in the same step (a replayed request adds nothing); a new call on one Redis
# server also joins the recent calls here (on a cluster they are in a slot of their own).
# KEYS[1] the call's state hash   KEYS[2] the call's journey (list of JSON turns)
# KEYS[3] (optional) the recent calls (sorted set: CallSid -> start, ms)
# ARGV[1] the version the turn started from ("" when creating: the call must have no state yet)
# ARGV[2] the new version   ARGV[3] the new state JSON   ARGV[4] time to live, ms
# ARGV[5] the turn as JSON ("" to add none)   ARGV[6] most turns kept
# ARGV[7] "replace": the turn takes the place of the journey's last one (a new call's first
#         turn, done again once its caller's language was known), else it is added
# With KEYS[3]: ARGV[8] the CallSid   ARGV[9] when the call started, ms   ARGV[10] most calls kept
# Returns 1 when saved, 0 when the call had moved on (or, creating, already had state).
SAVE_STATE = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'state', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then
  if ARGV[7] == 'replace' and redis.call('LLEN', KEYS[2]) > 0 then
    redis.call('LSET', KEYS[2], -1, ARGV[5])
  else
    redis.call('RPUSH', KEYS[2], ARGV[5])
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if KEYS[3] then
  redis.call('ZADD', KEYS[3], ARGV[9], ARGV[8])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[10]) - 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
"""
JOURNEY_CAP = 200  # turns kept per call: far more than any call takes
RECENT_CALLS_CAP = 1000  # calls listed on the console's Calls page


class CallStateStore:
    """Typed access to call state: one Redis round trip per method; sealing needs none."""

    def __init__(self, client: RedisClient, ttl_seconds: int, secret_key: bytes):
        self.redis = client
        self.ttl_ms = ttl_seconds * 1000
        self._save = client.register_script(SAVE_STATE)
        self._seal = AESGCM(derive_key(secret_key, "call-state-seal"))
        self._trial_seal = AESGCM(derive_key(secret_key, "simulator-trial"))

    def load(self, call_sid: str) -> CallState | None:
        version, text = self.redis.hmget(keys.call_state(call_sid), "version", "state")
        if version is None or text is None:
            return None
        state = CallState.from_json(text)
        state.version = version.decode() if isinstance(version, bytes) else version
        return state

    def is_current(self, call_sid: str, state: CallState) -> bool:
        """True if `state` (say, opened from a URL) is still the call's saved version."""
        current = self.redis.hget(keys.call_state(call_sid), "version")
        if isinstance(current, bytes):
            current = current.decode()
        return bool(state.version) and current == state.version

    @staticmethod
    def advance(state: CallState, step: int) -> str:
        """Make `state` the call's next version, asked at `step`; the version it replaces."""
        replaced = state.version
        state.step = step
        state.version = f"{step}.{secrets.token_hex(6)}"
        return replaced

    def save(
        self,
        call_sid: str,
        state: CallState,
        *,
        replaces: str,
        text: str | None = None,
        turn: dict[str, Any] | None = None,
        replacing_turn: bool = False,
    ) -> bool:
        """Store `state` (already advanced) if the call is still at version `replaces` (""
        creates it: only if the call has no state yet), with `turn` added to its journey (or,
        `replacing_turn`, in place of its last one). False if it moved on meanwhile. A new
        call also joins the recent calls (in the same script on one server; on a cluster,
        where they have a slot of their own, after it)."""
        saved, _ = self._run_save(call_sid, state, replaces, text, turn, replacing_turn, None)
        return saved

    def create_and_read(
        self,
        call_sid: str,
        state: CallState,
        *,
        text: str,
        turn: dict[str, Any],
        read: tuple[str, str],
    ) -> tuple[bool, str | None]:
        """`save` of a new call, and the hash field `read` (key, field) read in the same round
        trip: whether it was saved, and the field's value."""
        return self._run_save(call_sid, state, "", text, turn, False, read)

    def _run_save(
        self,
        call_sid: str,
        state: CallState,
        replaces: str,
        text: str | None,
        turn: dict[str, Any] | None,
        replacing_turn: bool,
        read: tuple[str, str] | None,
    ) -> tuple[bool, str | None]:
        keys_ = [keys.call_state(call_sid), keys.call_journey(call_sid)]
        args: list[Any] = [
            replaces,
            state.version,
            text or state.to_json(),
            self.ttl_ms,
            json.dumps(turn, separators=(",", ":")) if turn else "",
            JOURNEY_CAP,
            "replace" if replacing_turn else "add",
        ]
        on_cluster = isinstance(self.redis, RedisCluster)
        started_ms = turn["at"] if turn else 0
        if not replaces and not on_cluster:
            keys_.append(keys.recent_calls())
            args += [call_sid, started_ms, RECENT_CALLS_CAP]
        # EVALSHA itself, not the script object: a pipeline given a script first asks Redis
        # whether it knows it (SCRIPT EXISTS), a round trip more; alone, the object's own
        # bookkeeping costs as much as packing the command.
        value: Any = None
        if read is None:
            try:
                outcome = self.redis.evalsha(self._save.sha, len(keys_), *keys_, *args)
            except redis.exceptions.NoScriptError as exc:
                outcome = exc
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._save.sha, len(keys_), *keys_, *args)
            pipe.hget(*read)
            outcome, value = pipe.execute(raise_on_error=False)
        if isinstance(outcome, redis.exceptions.NoScriptError):
            # Not in this Redis' script cache (restarted, failed over): it did not run; now
            # it is loaded and run, once.
            outcome = self._save(keys=keys_, args=args)
        for answer in (outcome, value):
            if isinstance(answer, Exception):
                raise answer
        saved = bool(outcome)
        if saved and not replaces and on_cluster:
            self._remember_recent(call_sid, started_ms)
        return saved, value

    def _remember_recent(self, call_sid: str, started_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.recent_calls(), {call_sid: started_ms})
        pipe.zremrangebyrank(keys.recent_calls(), 0, -RECENT_CALLS_CAP - 1)
        pipe.pexpire(keys.recent_calls(), self.ttl_ms)
        pipe.execute()

    def journey(self, call_sid: str) -> list[dict[str, Any]]:
        """The call's turns, oldest first (nodes passed, keys masked, prompts, side effects)."""
        return [json.loads(raw) for raw in self.redis.lrange(keys.call_journey(call_sid), 0, -1)]

    def recent(self, limit: int = 100) -> list[tuple[str, CallState | None, int]]:
        """The newest calls: (CallSid, its state or None once expired, start time in ms)."""
        entries = self.redis.zrevrange(keys.recent_calls(), 0, limit - 1, withscores=True)
        pipe = self.redis.pipeline(transaction=False)
        for call_sid, _ in entries:
            pipe.hget(keys.call_state(call_sid), "state")
        found = []
        for (call_sid, started), text in zip(entries, pipe.execute(), strict=True):
            found.append((call_sid, CallState.from_json(text) if text else None, int(started)))
        return found

    def seal(self, call_sid: str, state: CallState, *, text: str | None = None) -> str | None:
        """`state` encrypted and bound to its call, for a URL; None when it would be too long.
        `text`: its JSON, when the caller has it already (a turn saves it too)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        packed = _deflate((text or state.to_json()).encode())
        box = self._seal.encrypt(nonce, packed, call_sid.encode())
        token = base64.urlsafe_b64encode(nonce + box).rstrip(b"=").decode()
        return token if len(token) <= MAX_SEALED_CHARS else None

    def unseal(self, call_sid: str, token: str) -> CallState | None:
        """The state sealed in `token` for this call; None if it does not open (tampered, for
        another call, another SECRET_KEY, or garbage)."""
        if not token or len(token) > MAX_SEALED_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            packed = self._seal.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], call_sid.encode())
            return CallState.from_json(zlib.decompress(packed, _WINDOW_BITS).decode())
        except (InvalidTag, ValueError, TypeError, zlib.error, UnicodeDecodeError):
            return None

    def seal_trial(self, call_sid: str, flow: str, revision: str, prompts: str = "") -> str:
        """A token that makes `call_sid` a console simulator's call of `flow` at `revision`
        (and the prompts at `prompts`): its first webhook's URL carries it. Only the holder of
        SECRET_KEY can make one, and a real Twilio call never has it."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = json.dumps([flow, revision, prompts], separators=(",", ":")).encode()
        box = self._trial_seal.encrypt(nonce, plain, call_sid.encode())
        return base64.urlsafe_b64encode(nonce + box).rstrip(b"=").decode()

    def open_trial(self, call_sid: str, token: str) -> tuple[str, str, str] | None:
        """(flow, revision, prompts) of a simulator's call, or None when `token` does not open."""
        if not token or len(token) > MAX_SEALED_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._trial_seal.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], call_sid.encode()
            )
            flow, revision, prompts = json.loads(plain)
        except (InvalidTag, ValueError, TypeError, UnicodeDecodeError):
            return None
        if not all(isinstance(part, str) for part in (flow, revision, prompts)):
            return None
        return flow, revision, prompts
