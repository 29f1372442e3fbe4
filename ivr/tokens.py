"""API bearer tokens: IVR_API_TOKEN from the environment, plus tokens the CLI issues.

Issued tokens are stored only as an HMAC (keyed from SECRET_KEY), like codes: a copy of Redis
does not let anyone call the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

import redis

from ivr import keys
from ivr.verification.codes import derive_key

ENV_TOKEN_NAME = "env"  # noqa: S105 - the client name for IVR_API_TOKEN, not a secret
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class IssuedToken:
    name: str
    created_at: int


class ApiTokens:
    def __init__(self, client: redis.Redis, secret_key: bytes, env_token: str):
        self.redis = client
        self._key = derive_key(secret_key, "api-token")
        self._env_token = env_token

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def identify(self, token: str) -> str | None:
        """The name of the client holding `token`, or None if it is not a valid token."""
        if hmac.compare_digest(token.encode(), self._env_token.encode()):
            return ENV_TOKEN_NAME
        if not token.startswith("ivr_") or len(token) > 128:
            return None
        record = self.redis.hget(keys.api_tokens(), self._digest(token))
        return json.loads(record)["name"] if record else None

    def issue(self, name: str) -> str:
        """Create a token for `name` and return it: shown once, stored only as an HMAC."""
        if not _NAME_PATTERN.fullmatch(name) or name == ENV_TOKEN_NAME:
            raise ValueError("a token name is 1-40 of a-z, 0-9, '_', '.', '-' (not 'env')")
        token = "ivr_" + secrets.token_urlsafe(32)
        digest = self._digest(token)
        if not self.redis.hsetnx(keys.api_token_names(), name, digest):  # atomic: one per name
            raise ValueError(f"a token named {name!r} exists; revoke it first")
        record = json.dumps({"name": name, "created_at": int(time.time())})
        self.redis.hset(keys.api_tokens(), digest, record)
        return token

    def list(self) -> list[IssuedToken]:
        records = (json.loads(r) for r in self.redis.hvals(keys.api_tokens()))
        return sorted(
            (IssuedToken(r["name"], r["created_at"]) for r in records), key=lambda t: t.name
        )

    def revoke(self, name: str) -> bool:
        digest = self.redis.hget(keys.api_token_names(), name)
        if digest is None:
            return False
        pipe = self.redis.pipeline()  # MULTI: both hashes share the {api-tokens} slot
        pipe.hdel(keys.api_tokens(), digest)
        pipe.hdel(keys.api_token_names(), name)
        pipe.execute()
        return True
