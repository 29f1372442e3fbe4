"""Console users, their server-side sessions, and the audit log of who changed what.

Passwords are hashed with Argon2id (argon2-cffi's defaults). Sessions live in Redis, so a
sign-out, a password change or a deleted user ends them on every host at once. The session
cookie carries `<user>.<secret>`; Redis keys hold only the SHA-256 of the secret (256 random
bits, so an unkeyed hash is enough: a dump of Redis hands out no live session). The user name
in the token lets every script touch one slot: a user's record, its sessions and their index
share the tag `{user:<name>}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ivr import keys

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
ADMIN_PASSWORD_FILE = "console_admin_password"  # noqa: S105 - a file name
_SLIDE_EVERY_MS = 60_000  # an idle expiry is pushed back at most once a minute


class Role(StrEnum):
    """Viewers see everything and change nothing; editors change flows, prompts and customers;
    admins also manage users."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = (Role.VIEWER, Role.EDITOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: int  # ms
    password_changed_at: int  # ms


@dataclass(frozen=True)
class Session:
    token: str  # the cookie's value: "<user>.<secret>"
    user: str
    role: Role
    csrf_token: str
    created_at: int
    expires_at: int  # the absolute end; the idle expiry may come sooner


class UserError(ValueError):
    """A refused change; `reason` is one of invalid_name, invalid_role, weak_password,
    name_taken, not_found, last_admin."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# Create a user unless the name is taken.
# KEYS[1] the user's hash   KEYS[2] the set of user names (another slot: written after)
# ARGV[1] name  ARGV[2] role  ARGV[3] password hash  ARGV[4] now ms
# Returns 1 when created, 0 when the name is taken.
CREATE_USER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'role', ARGV[2], 'hash', ARGV[3],
           'created_at', ARGV[4], 'password_changed_at', ARGV[4])
return 1
"""

# End sessions of a user: every session in its index, then the index.
# KEYS[1] the user's session index (set of session key names, all in the user's slot)
# Returns how many sessions ended.
END_SESSIONS = """
local sessions = redis.call('SMEMBERS', KEYS[1])
for _, key in ipairs(sessions) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1])
return #sessions
"""

# Look a session up: it must exist, belong to a user that still exists, and be within its
# idle and absolute expiry; the idle expiry slides (at most once a minute).
# KEYS[1] the session hash   KEYS[2] the user's hash   KEYS[3] the user's session index
# ARGV[1] now ms  ARGV[2] idle ms  ARGV[3] slide granularity ms
# Returns {user, role, csrf, created_at, expires_at}, or false.
FIND_SESSION = """
local s = redis.call('HMGET', KEYS[1], 'user', 'csrf', 'created_at', 'expires_at', 'seen_at')
if not s[1] then return false end
local role = redis.call('HGET', KEYS[2], 'role')
local now = tonumber(ARGV[1])
if not role or now >= tonumber(s[4]) or now >= tonumber(s[5]) + tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], KEYS[1])
  return false
end
if now - tonumber(s[5]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'seen_at', ARGV[1])
  local left = math.min(tonumber(s[4]) - now, tonumber(ARGV[2]))
  redis.call('PEXPIRE', KEYS[1], left)
end
return {s[1], role, s[2], s[3], s[4]}
"""

# Delete a user and every session of theirs.
# KEYS[1] the user's hash  KEYS[2] the user's session index
# Returns 1 when the user existed.
DELETE_USER = """
local existed = redis.call('DEL', KEYS[1])
""" + END_SESSIONS.replace("return #sessions", "return existed")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _valid_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name.strip().lower()):
        raise UserError(
            "invalid_name",
            "a user name is 2 to 32 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter",
        )
    return name.strip().lower()


def _valid_role(role: object) -> Role:
    try:
        return Role(str(role).lower())
    except ValueError:
        raise UserError("invalid_role", "role must be admin, editor or viewer") from None


def _valid_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(
            "weak_password", f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )
    if len(set(password)) == 1:
        raise UserError("weak_password", "a password is not one character repeated")
    return password


def _secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Users:
    """Console users and sessions in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        session_idle_seconds: int = 8 * 3600,
        session_max_seconds: int = 24 * 3600,
        hasher: PasswordHasher | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ):
        self.redis = client
        self.idle_ms = session_idle_seconds * 1000
        self.max_ms = session_max_seconds * 1000
        self.hasher = hasher or PasswordHasher()
        self._clock = clock_ms
        self._create = client.register_script(CREATE_USER)
        self._end_sessions = client.register_script(END_SESSIONS)
        self._find_session = client.register_script(FIND_SESSION)
        self._delete = client.register_script(DELETE_USER)
        self._dummy_hash: str | None = None

    # -- users -------------------------------------------------------------------------------

    def create(self, name: str, role: Role | str, password: str) -> User:
        name, role = _valid_name(name), _valid_role(role)
        digest = self.hasher.hash(_valid_password(password))
        now = self._clock()
        created = self._create(
            keys=[keys.console_user(name), keys.console_user_names()],
            args=[name, str(role), digest, now],
        )
        if not created:
            raise UserError("name_taken", f"user {name} already exists")
        self.redis.sadd(keys.console_user_names(), name)
        return User(name, role, now, now)

    def get(self, name: str) -> User | None:
        try:
            name = _valid_name(name)
        except UserError:
            return None
        return self._user(self.redis.hgetall(keys.console_user(name)))

    @staticmethod
    def _user(record: dict[str, str]) -> User | None:
        if not record.get("name"):
            return None
        return User(
            record["name"],
            Role(record["role"]),
            int(record["created_at"]),
            int(record["password_changed_at"]),
        )

    def list(self) -> list[User]:
        names = sorted(self.redis.smembers(keys.console_user_names()))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.console_user(name))
        return [user for user in map(self._user, pipe.execute()) if user is not None]

    def count(self) -> int:
        return len(self.list())

    def _admins(self) -> list[str]:
        return [user.name for user in self.list() if user.role is Role.ADMIN]

    def set_role(self, name: str, role: Role | str) -> User:
        role = _valid_role(role)
        user = self._require(name)
        if user.role is Role.ADMIN and role is not Role.ADMIN and self._admins() == [user.name]:
            raise UserError("last_admin", f"{user.name} is the last admin: make another first")
        self.redis.hset(keys.console_user(user.name), "role", str(role))
        return User(user.name, role, user.created_at, user.password_changed_at)

    def set_password(self, name: str, password: str) -> User:
        user = self._require(name)
        digest = self.hasher.hash(_valid_password(password))
        now = self._clock()
        self.redis.hset(
            keys.console_user(user.name), mapping={"hash": digest, "password_changed_at": now}
        )
        self.close_sessions(user.name)
        return User(user.name, user.role, user.created_at, now)

    def delete(self, name: str) -> bool:
        user = self.get(name)
        if user is None:
            return False
        if user.role is Role.ADMIN and self._admins() == [user.name]:
            raise UserError("last_admin", f"{user.name} is the last admin: make another first")
        existed = self._delete(
            keys=[keys.console_user(user.name), keys.console_user_sessions(user.name)]
        )
        self.redis.srem(keys.console_user_names(), user.name)
        return bool(existed)

    def _require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UserError("not_found", f"no user {name}")
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is theirs; the same work (one Argon2 check) either way, and
        no word on which of the two was wrong."""
        try:
            name = _valid_name(name)
        except UserError:
            name = ""
        record = self.redis.hgetall(keys.console_user(name)) if name else {}
        stored = record.get("hash") or self._dummy()
        try:
            self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not record.get("hash"):
            return None
        if self.hasher.check_needs_rehash(stored):
            self.redis.hset(keys.console_user(name), "hash", self.hasher.hash(password))
        return self._user(record)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    # -- sessions ------------------------------------------------------------------------------

    def open_session(self, user: User) -> Session:
        secret = secrets.token_urlsafe(32)
        token = f"{user.name}.{secret}"
        now = self._clock()
        csrf = secrets.token_urlsafe(32)
        session_key = keys.console_session(user.name, _secret_digest(secret))
        pipe = self.redis.pipeline(transaction=True)  # one slot: the user's
        pipe.hset(
            session_key,
            mapping={
                "user": user.name,
                "csrf": csrf,
                "created_at": now,
                "expires_at": now + self.max_ms,
                "seen_at": now,
            },
        )
        pipe.pexpire(session_key, min(self.idle_ms, self.max_ms))
        pipe.sadd(keys.console_user_sessions(user.name), session_key)
        pipe.pexpire(keys.console_user_sessions(user.name), self.max_ms)
        pipe.execute()
        return Session(token, user.name, user.role, csrf, now, now + self.max_ms)

    def _session_keys(self, token: str) -> tuple[str, str] | None:
        name, _, secret = token.partition(".")
        if not secret or len(token) > 200 or not NAME_PATTERN.fullmatch(name):
            return None
        return name, keys.console_session(name, _secret_digest(secret))

    def session(self, token: str) -> Session | None:
        """The live session for a cookie's token; None when unknown, expired or its user gone.
        The role is read fresh, so a change of role applies at the next request."""
        found = self._session_keys(token)
        if found is None:
            return None
        name, session_key = found
        result = self._find_session(
            keys=[session_key, keys.console_user(name), keys.console_user_sessions(name)],
            args=[self._clock(), self.idle_ms, _SLIDE_EVERY_MS],
        )
        if not result:
            return None
        user, role, csrf, created_at, expires_at = result
        return Session(token, user, Role(role), csrf, int(created_at), int(expires_at))

    def close_session(self, token: str) -> None:
        found = self._session_keys(token)
        if found is None:
            return
        name, session_key = found
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(session_key)
        pipe.srem(keys.console_user_sessions(name), session_key)
        pipe.execute()

    def close_sessions(self, name: str) -> int:
        return int(self._end_sessions(keys=[keys.console_user_sessions(_valid_name(name))]))


# -- the audit log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    at: int  # ms
    actor: str  # a console user, or "cli:<login>"
    action: str  # user.create, flow.publish, customer.put…
    target: str
    before: Any
    after: Any


class AuditLog:
    """Every change made in the console or through `ivr` commands, newest first, capped."""

    def __init__(self, client: redis.Redis, cap: int = 10_000):
        self.redis = client
        self.cap = cap

    def record(
        self, actor: str, action: str, target: str, *, before: Any = None, after: Any = None
    ) -> None:
        entry = {
            "at": _now_ms(),
            "actor": actor,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(keys.audit_log(), json.dumps(entry, default=str))
        pipe.ltrim(keys.audit_log(), 0, self.cap - 1)
        pipe.execute()

    def entries(self, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        raw = self.redis.lrange(keys.audit_log(), offset, offset + limit - 1)
        return [AuditEntry(**json.loads(item)) for item in raw]


def ensure_development_admin(users: Users, instance_path: Path) -> Path | None:
    """When no user exists, create `admin` with a generated password kept in the instance
    folder (mode 0600) and return that file; with users, the file if it is still there. Safe
    when several workers race: creating the user is atomic, and only its creator writes."""
    path = Path(instance_path) / ADMIN_PASSWORD_FILE
    if users.redis.scard(keys.console_user_names()) == 0:
        password = secrets.token_urlsafe(18)
        try:
            users.create("admin", Role.ADMIN, password)
        except UserError:
            pass  # another worker made it first
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(password + "\n")
            os.replace(draft, path)
            return path
        # The winner may still be writing the file: wait for it briefly.
        deadline = time.monotonic() + 2
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    with contextlib.suppress(OSError):
        if path.exists():
            return path
    return None
