"""API bearer tokens: IVR_API_TOKEN from the environment, plus tokens the CLI issues.

Issued tokens are stored only as an HMAC (keyed from SECRET_KEY), like codes: a copy of Redis
does not let anyone call the API.

Records are sharded by the HMAC, the name index by the name: a token and its name live in
different slots, so issuing and revoking follow ivr.claims. Issue: claim the name, then write
the record. Revoke: delete the record (the token stops working at once), then release the
name. The record is the truth: a name's claim is believed only when a record with that name
is behind it, and a claim a crash left without its record is taken over once stale.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ivr import claims, keys
from ivr.store import RedisClient
from ivr.verification.codes import derive_key

log = logging.getLogger(__name__)
ENV_TOKEN_NAME = "env"  # noqa: S105 - the client name for IVR_API_TOKEN, not a secret
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class IssuedToken:
    name: str
    created_at: int
    service: str | None = None  # the Verify Service it is scoped to; None: every Service


@dataclass(frozen=True)
class ApiClient:
    """Who a valid token belongs to, and the Verify Service it may act in (None: any; on
    /v1, the default one)."""

    name: str
    service: str | None = None


class ApiTokens:
    def __init__(
        self,
        client: RedisClient,
        secret_key: bytes,
        env_token: str,
        clock_ms: Callable[[], int] = claims.now_ms,
    ):
        self.redis = client
        self._key = derive_key(secret_key, "api-token")
        self._env_token = env_token
        self._clock = clock_ms
        self._claim = client.register_script(claims.CLAIM)
        self._release = client.register_script(claims.RELEASE)

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def identify(self, token: str) -> str | None:
        """The name of the client holding `token`, or None if it is not a valid token."""
        client = self.client(token)
        return client.name if client else None

    def client(self, token: str) -> ApiClient | None:
        """The client holding `token` and its scope, or None if it is not a valid token."""
        if hmac.compare_digest(token.encode(), self._env_token.encode()):
            return ApiClient(ENV_TOKEN_NAME)
        if not token.startswith("ivr_") or len(token) > 128:
            return None
        digest = self._digest(token)
        raw = self.redis.hget(keys.api_tokens(keys.api_token_shard(digest)), digest)
        if not raw:
            return None
        record = json.loads(raw)
        return ApiClient(record["name"], record.get("service"))

    def key_sid(self, token: str) -> str:
        """The token's key sid ("SK" + 32 hex), which a Twilio SDK may send as the Basic auth
        user name: derived from the token's HMAC, so it is the same on every host, needs no
        storage, and tells nothing of the token."""
        digest = hashlib.sha256(b"key-sid:" + self._digest(token).encode()).hexdigest()
        return "SK" + digest[:32]

    def issue(self, name: str, service: str | None = None) -> str:
        """Create a token for `name` and return it: shown once, stored only as an HMAC.
        `service`: the one Verify Service (VA…) it may act in; without, every Service (and
        the default one on /v1)."""
        if not _NAME_PATTERN.fullmatch(name) or name == ENV_TOKEN_NAME:
            raise ValueError("a token name is 1-40 of a-z, 0-9, '_', '.', '-' (not 'env')")
        token = "ivr_" + secrets.token_urlsafe(32)
        digest = self._digest(token)
        entry = self.claim_name(name, digest)
        self.write_record(name, digest, entry, service)
        return token

    # -- the steps (public so that tests can stop between them) ------------------------------

    def claim_name(self, name: str, digest: str) -> str:
        """Step 1 of issuing: claim `name` for the token `digest`; the claim's entry.
        ValueError when a token holds the name (or is being issued under it right now)."""
        now = self._clock()
        index = keys.api_token_names(keys.api_token_name_shard(name))
        won, entry = self._claim(keys=[index], args=[name, digest, now, ""])
        if won:
            return entry
        held = claims.Claim.parse(entry)
        if self._record(held.owner) is None and not held.in_flight(now):
            won, entry = self._claim(keys=[index], args=[name, digest, now, held.entry])
            if won:
                return entry
        raise ValueError(f"a token named {name!r} exists; revoke it first")

    def write_record(self, name: str, digest: str, entry: str, service: str | None = None) -> None:
        """Step 2 of issuing: the token's record; from now on the token works."""
        now = self._clock()
        claims.check_not_lapsed(claims.Claim.parse(entry).claimed_at, now)
        fields: dict[str, object] = {"name": name, "created_at": now // 1000, "claim": entry}
        if service:
            fields["service"] = service
        record = json.dumps(fields)
        self.redis.hset(keys.api_tokens(keys.api_token_shard(digest)), digest, record)

    def _record(self, digest: str) -> dict[str, object] | None:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        raw = self.redis.hget(keys.api_tokens(keys.api_token_shard(digest)), digest)
        return json.loads(raw) if raw else None

    def list(self) -> list[IssuedToken]:
        """Every issued token's name and creation time (every shard, one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.API_TOKEN_SHARDS):
            pipe.hvals(keys.api_tokens(shard))
        records = [json.loads(raw) for shard in pipe.execute() for raw in shard]
        return sorted(
            (IssuedToken(r["name"], r["created_at"], r.get("service")) for r in records),
            key=lambda t: t.name,
        )

    def revoke(self, name: str) -> bool:
        """End the token called `name`: its record first (it stops working), then the name."""
        index = keys.api_token_names(keys.api_token_name_shard(name))
        entry = self.redis.hget(index, name)
        if entry is None:
            return False
        held = claims.Claim.parse(entry)
        record = self._record(held.owner)
        if record is not None and record.get("name") == name:
            self.redis.hdel(keys.api_tokens(keys.api_token_shard(held.owner)), held.owner)
        elif held.in_flight(self._clock()):
            return False  # being issued right now: nothing to revoke yet
        else:
            record = None  # a claim a crash left: released below, but no token was revoked
        self._release(keys=[index], args=[name, held.entry])
        return record is not None

    def migrate_legacy_layout(self) -> int:
        """Move tokens from the single-slot layout (before sharding) into the shards; how many
        moved. Idempotent: the old hashes go once every token is in the shards."""
        old = self.redis.hgetall(keys.legacy_api_tokens())
        moved = 0
        for digest, raw in old.items():
            record = json.loads(raw)
            index = keys.api_token_names(keys.api_token_name_shard(record["name"]))
            won, entry = self._claim(keys=[index], args=[record["name"], digest, self._clock(), ""])
            if not won:  # the name was given out again since, in the shards: theirs wins
                log.warning(
                    "tokens: the old token %r was not migrated: the name is taken", record["name"]
                )
                continue
            record["claim"] = entry
            self.redis.hset(
                keys.api_tokens(keys.api_token_shard(digest)), digest, json.dumps(record)
            )
            moved += 1
        self.redis.delete(keys.legacy_api_tokens())
        self.redis.delete(keys.legacy_api_token_names())
        return moved
