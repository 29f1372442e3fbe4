"""Console users, their server-side sessions, and the audit log of who changed what.

Passwords are hashed with Argon2id (argon2-cffi's defaults). Sessions live in Redis, so a
sign-out, a password change or a deleted user ends them on every host at once.

The session cookie carries `<user>.<secret>`. Redis keys hold only the SHA-256 of the secret:
it is 256 random bits, so nobody can guess it from its hash and an unkeyed hash is enough (no
key to manage or rotate), yet a dump of Redis hands out no live session. The user name in the
token lets every script touch one slot: a user's record, its sessions and their index share the
tag `{user:<name>}`. A global token → user map would need a second slot, hence a second round
trip and no single script; the name it would hide is no secret from whoever holds the cookie.

Creating, deleting and changing the role of users hold a short lock (redis-py's `Lock`), so the
"one admin at least" rule is checked and kept across hosts although users live in many slots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.commands.core import Script

from ivr import keys
from ivr.store import RedisClient

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
ADMIN_PASSWORD_FILE = "console_admin_password"  # noqa: S105 - a file name
DEVELOPMENT_ADMIN = "admin"
_SLIDE_EVERY_MS = 60_000  # an idle expiry is pushed back at most once a minute
_MAX_TOKEN = 200
_SESSION_READS = 5  # times the session index is read again while sessions are being opened
_LOCK_SECONDS = 10  # the lock outlives any user change (a few round trips) by far
# Never in an audit entry's before/after: what would let a reader sign in.
_SECRET_AUDIT_FIELDS = frozenset({"password", "password_hash", "hash"})


class Role(StrEnum):
    """Viewers see everything and change nothing; editors change flows, prompts and customers;
    admins also manage users."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role may do what `needed` may (admin >= editor >= viewer)."""
        order = (Role.VIEWER, Role.EDITOR, Role.ADMIN)
        return order.index(self) >= order.index(Role(needed))


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
    role: Role  # read fresh from the user at every lookup
    csrf_token: str
    created_at: int  # ms
    expires_at: int  # ms, the absolute end; the idle expiry may come sooner


class UserError(ValueError):
    """A refused change; `reason` is one of invalid_name, invalid_role, weak_password,
    name_taken, not_found, last_admin."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- Redis ---------------------------------------------------------------------------------------

# Create a user unless the name is taken.
# KEYS[1] the user's hash
# ARGV[1] name  ARGV[2] role  ARGV[3] password hash  ARGV[4] now (ms)
# Returns 1 when created, 0 when the name is taken.
CREATE_USER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'role', ARGV[2], 'hash', ARGV[3],
           'created_at', ARGV[4], 'password_changed_at', ARGV[4])
return 1
"""

# Change a user's role, never re-creating a user deleted meanwhile as a stray field.
# KEYS[1] the user's hash
# ARGV[1] role
# Returns 1 when changed, 0 when there is no such user.
SET_ROLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'role', ARGV[1])
return 1
"""

# Every script that ends sessions is given them in KEYS (read from the index just before), so no
# key is reached that was not declared; this prelude refuses to run when the index gained a
# session since it was read (a sign-in meanwhile), and the caller reads the index again.
_DECLARED_SESSIONS = """
local function declared_sessions(index, first)
  local declared = {}
  for i = first, #KEYS do declared[KEYS[i]] = true end
  for _, key in ipairs(redis.call('SMEMBERS', index)) do
    if not declared[key] then return false end
  end
  return true
end
local function end_declared_sessions(index, first)
  for i = first, #KEYS do redis.call('DEL', KEYS[i]) end
  redis.call('DEL', index)
  return #KEYS - first + 1
end
"""
_SESSIONS_CHANGED = -2  # what those scripts return when the index changed since it was read

# Replace a user's password hash and end every session of theirs.
# KEYS[1] the user's hash  KEYS[2] the user's session index  KEYS[3..] every session in it
# ARGV[1] the new hash  ARGV[2] now (ms)
# Returns how many sessions ended, -1 when there is no such user, -2 when the index changed.
CHANGE_HASH = (
    _DECLARED_SESSIONS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if not declared_sessions(KEYS[2], 3) then return -2 end
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'password_changed_at', ARGV[2])
return end_declared_sessions(KEYS[2], 3)
"""
)

# Store a password rehashed with today's parameters, unless it changed since it was verified
# (a rehash must never undo a password change made meanwhile).
# KEYS[1] the user's hash
# ARGV[1] the hash that was verified  ARGV[2] the new hash
# Returns 1 when stored, else 0.
REHASH = """
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[2])
return 1
"""

# Delete a user and every session of theirs.
# KEYS[1] the user's hash  KEYS[2] the user's session index  KEYS[3..] every session in it
# Returns 1 when the user existed, else 0; -2 when the index changed (nothing deleted).
DELETE_USER = (
    _DECLARED_SESSIONS
    + """
if not declared_sessions(KEYS[2], 3) then return -2 end
local existed = redis.call('DEL', KEYS[1])
end_declared_sessions(KEYS[2], 3)
return existed
"""
)

# End every session of a user.
# KEYS[1] the user's session index  KEYS[2..] every session in it (all in the user's slot)
# Returns how many sessions ended; -2 when the index changed (nothing ended).
END_SESSIONS = (
    _DECLARED_SESSIONS
    + """
if not declared_sessions(KEYS[1], 2) then return -2 end
return end_declared_sessions(KEYS[1], 2)
"""
)

# Open a session: its hash, expiring when idle, listed in the user's index (which outlives every
# session in it); index entries of sessions that expired meanwhile are dropped (those the caller
# read from the index just before: a script reaches only the keys it was given).
# KEYS[1] the session's hash  KEYS[2] the user's session index  KEYS[3..] sessions in the index
# ARGV[1] user  ARGV[2] CSRF token  ARGV[3] now (ms)  ARGV[4] absolute end (ms)
# ARGV[5] idle expiry (ms)  ARGV[6] the user's created_at  ARGV[7] their password_changed_at
# Returns 1.
OPEN_SESSION = """
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[2], KEYS[i]) end
end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'csrf', ARGV[2], 'created_at', ARGV[3],
           'expires_at', ARGV[4], 'seen_at', ARGV[3], 'user_created_at', ARGV[6],
           'password_changed_at', ARGV[7])
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) - tonumber(ARGV[3])))
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) - tonumber(ARGV[3]))
return 1
"""

# Look a session up. It must exist, be within its idle and absolute expiry, and its user must
# still exist with the password the session was opened with (a sign-in racing a password change
# or a deletion opens nothing that lasts). The idle expiry slides, at most once a minute.
# KEYS[1] the session's hash  KEYS[2] the user's hash  KEYS[3] the user's session index
# ARGV[1] now (ms)  ARGV[2] idle expiry (ms)  ARGV[3] slide at most this often (ms)
# Returns {user, role (read now), CSRF token, created_at, expires_at}, or false (the session,
# if any, is gone then).
FIND_SESSION = """
local s = redis.call('HMGET', KEYS[1], 'user', 'csrf', 'created_at', 'expires_at', 'seen_at',
                     'user_created_at', 'password_changed_at')
if not s[1] then
  redis.call('SREM', KEYS[3], KEYS[1])
  return false
end
local u = redis.call('HMGET', KEYS[2], 'role', 'created_at', 'password_changed_at')
local now = tonumber(ARGV[1])
if not u[1] or u[2] ~= s[6] or u[3] ~= s[7] or now >= tonumber(s[4])
   or now >= tonumber(s[5]) + tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], KEYS[1])
  return false
end
if now - tonumber(s[5]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'seen_at', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.min(tonumber(s[4]) - now, tonumber(ARGV[2])))
end
return {s[1], u[1], s[2], s[3], s[4]}
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


def valid_name(name: object) -> str:
    """`name` as stored (lower case), or UserError invalid_name."""
    folded = name.strip().lower() if isinstance(name, str) else ""
    if not NAME_PATTERN.fullmatch(folded):
        raise UserError(
            "invalid_name",
            "a user name is 2 to 32 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter",
        )
    return folded


def _valid_role(role: object) -> Role:
    try:
        return Role(str(role).strip().lower())
    except ValueError:
        raise UserError("invalid_role", "a role is admin, editor or viewer") from None


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
    """Console users and their sessions, in Redis."""

    def __init__(
        self,
        client: RedisClient,
        *,
        session_idle_seconds: int = 8 * 3600,
        session_max_seconds: int = 24 * 3600,
        hasher: PasswordHasher | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        development_password_file: Path | None = None,
    ):
        """`development_password_file` is where ensure_development_admin writes the first
        admin's password: it is deleted once that password stops being the admin's."""
        if session_idle_seconds <= 0 or session_max_seconds <= 0:
            raise ValueError("session lifetimes are positive")
        self.redis = client
        self.idle_ms = session_idle_seconds * 1000
        self.max_ms = session_max_seconds * 1000
        self.hasher = hasher or PasswordHasher()  # public: tests swap in a cheap one
        self._clock = clock_ms
        self.development_password_file = development_password_file
        self._create = client.register_script(CREATE_USER)
        self._set_role = client.register_script(SET_ROLE)
        self._change_hash = client.register_script(CHANGE_HASH)
        self._rehash = client.register_script(REHASH)
        self._delete = client.register_script(DELETE_USER)
        self._end_sessions = client.register_script(END_SESSIONS)
        self._open_session = client.register_script(OPEN_SESSION)
        self._find_session = client.register_script(FIND_SESSION)
        self._dummy: tuple[PasswordHasher, str] | None = None

    # -- users -------------------------------------------------------------------------------

    def create(self, name: str, role: Role | str, password: str) -> User:
        """A new user; UserError (name_taken…) if refused."""
        name, role = valid_name(name), _valid_role(role)
        digest = self.hasher.hash(_valid_password(password))
        now = self._clock()
        with self._changing_users():
            # The name first: a crash in between leaves a name without a user, which list()
            # skips, never a user that list() cannot show.
            self.redis.sadd(keys.console_user_names(), name)
            if not self._create(keys=[keys.console_user(name)], args=[name, role, digest, now]):
                raise UserError("name_taken", f"user {name} already exists")
        return User(name, role, now, now)

    def get(self, name: str) -> User | None:
        """The user called `name` (any case), or None."""
        try:
            name = valid_name(name)
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
        """Every user, sorted by name."""
        names = sorted(self.redis.smembers(keys.console_user_names()))
        pipe = self.redis.pipeline(transaction=False)  # one slot per user
        for name in names:
            pipe.hgetall(keys.console_user(name))
        return [user for user in map(self._user, pipe.execute()) if user is not None]

    def count(self) -> int:
        """How many users there are."""
        return len(self.list())

    def set_role(self, name: str, role: Role | str) -> User:
        """Give a user another role; the last admin keeps theirs (UserError last_admin)."""
        role = _valid_role(role)
        with self._changing_users():
            user = self._require(name)
            if role is not Role.ADMIN:
                self._refuse_last_admin(user)
            if not self._set_role(keys=[keys.console_user(user.name)], args=[role]):
                raise UserError("not_found", f"no user {user.name}")
        return User(user.name, role, user.created_at, user.password_changed_at)

    def set_password(self, name: str, password: str) -> User:
        """Give a user a new password, ending every session of theirs."""
        name = valid_name(name)
        digest = self.hasher.hash(_valid_password(password))
        now = self._clock()
        ended = self._ending_sessions(
            name,
            self._change_hash,
            [keys.console_user(name), keys.console_user_sessions(name)],
            [digest, now],
        )
        user = self.get(name) if ended != -1 else None
        if user is None:
            raise UserError("not_found", f"no user {name}")
        self._forget_development_password(user.name)
        return user

    def delete(self, name: str) -> bool:
        """Delete a user and end their sessions; False if there was none. The last admin stays
        (UserError last_admin)."""
        with self._changing_users():
            user = self.get(name)
            if user is None:
                return False
            self._refuse_last_admin(user)
            existed = self._ending_sessions(
                user.name,
                self._delete,
                [keys.console_user(user.name), keys.console_user_sessions(user.name)],
                [],
            )
            self.redis.srem(keys.console_user_names(), user.name)
        self._forget_development_password(user.name)
        return bool(existed)

    def _forget_development_password(self, name: str) -> None:
        """After the development admin's password changed or the admin went, the generated
        password written down in the instance folder signs nobody in: delete the file, so
        neither it nor the sign-in page (which mentions it while it exists) misleads."""
        path = self.development_password_file
        if name != DEVELOPMENT_ADMIN or path is None:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # the change is made; a file we may not delete is no reason to fail
            log.warning("console: could not delete the stale password file %s (%s)", path, exc)

    def _require(self, name: str) -> User:
        user = self.get(valid_name(name))
        if user is None:
            raise UserError("not_found", f"no user {name.strip().lower()}")
        return user

    def _refuse_last_admin(self, user: User) -> None:
        """Call with the lock held: `user` is about to stop being an admin."""
        if user.role is not Role.ADMIN:
            return
        if not any(u.role is Role.ADMIN and u.name != user.name for u in self.list()):
            raise UserError(
                "last_admin", f"{user.name} is the last admin: make another admin first"
            )

    @contextlib.contextmanager
    def _changing_users(self) -> Iterator[None]:
        """Hold the user-management lock: checks of the whole user list (the last admin) and the
        change they allow happen as one, across hosts."""
        lock = self.redis.lock(
            keys.console_users_lock(),
            timeout=_LOCK_SECONDS,
            blocking_timeout=_LOCK_SECONDS,
            raise_on_release_error=False,  # the change is made; an expired lock is no error
        )
        with lock:
            yield

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is theirs, else None: one Argon2 check whether the user
        exists or not, and no word on which of the two was wrong. A hash made with weaker
        parameters than today's is replaced."""
        dummy = self._dummy_hash()  # first, so a process's first sign-in costs the same either way
        try:
            name = valid_name(name)
        except UserError:
            name = ""
        record = self.redis.hgetall(keys.console_user(name)) if name else {}
        stored = record.get("hash")
        usable = isinstance(password, str) and len(password) <= MAX_PASSWORD
        try:
            self.hasher.verify(stored if stored and usable else dummy, password if usable else "")
        except (VerificationError, InvalidHashError):
            return None
        if not stored or not usable:
            return None
        if self.hasher.check_needs_rehash(stored):
            self._rehash(keys=[keys.console_user(name)], args=[stored, self.hasher.hash(password)])
        return self._user(record)

    def _dummy_hash(self) -> str:
        """A hash of nobody's password, made by the current hasher (same parameters, same work)."""
        if self._dummy is None or self._dummy[0] is not self.hasher:
            self._dummy = (self.hasher, self.hasher.hash(secrets.token_urlsafe(16)))
        return self._dummy[1]

    # -- sessions ------------------------------------------------------------------------------

    def open_session(self, user: User) -> Session:
        """A new session for a user who just signed in; its token goes in the cookie."""
        secret = secrets.token_urlsafe(32)  # base64url: no '.', so the token splits at its last
        token = f"{user.name}.{secret}"
        csrf = secrets.token_urlsafe(32)
        now = self._clock()
        expires_at = now + self.max_ms
        index = keys.console_user_sessions(user.name)
        self._open_session(
            keys=[
                keys.console_session(user.name, _secret_digest(secret)),
                index,
                *sorted(self.redis.smembers(index)),  # for the clean-up of expired ones
            ],
            args=[
                user.name,
                csrf,
                now,
                expires_at,
                self.idle_ms,
                user.created_at,
                user.password_changed_at,
            ],
        )
        return Session(token, user.name, user.role, csrf, now, expires_at)

    @staticmethod
    def _session_key(token: str) -> tuple[str, str] | None:
        """(user name, session key) for a cookie's token, or None if it cannot be one."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN:
            return None
        name, _, secret = token.rpartition(".")  # a name may hold '.', the secret never does
        if not secret or not NAME_PATTERN.fullmatch(name):
            return None
        return name, keys.console_session(name, _secret_digest(secret))

    def session(self, token: str) -> Session | None:
        """The live session for a cookie's token; None when unknown, expired or its user gone
        (or their password changed). The role is read fresh, so a new role applies at once."""
        found = self._session_key(token)
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
        """Sign out: the session ends on every host."""
        found = self._session_key(token)
        if found is None:
            return
        name, session_key = found
        pipe = self.redis.pipeline(transaction=True)  # MULTI: both keys are in the user's slot
        pipe.delete(session_key)
        pipe.srem(keys.console_user_sessions(name), session_key)
        pipe.execute()

    def close_sessions(self, name: str) -> int:
        """End every session of a user; how many there were."""
        try:
            name = valid_name(name)
        except UserError:
            return 0
        return self._ending_sessions(
            name, self._end_sessions, [keys.console_user_sessions(name)], []
        )

    def _ending_sessions(self, name: str, script: Script, head: list[str], args: list[Any]) -> int:
        """Run a script that ends every session of `name`, given them in KEYS after `head`;
        the index is read again when a session was opened in between."""
        index = keys.console_user_sessions(name)
        for _ in range(_SESSION_READS):
            sessions = sorted(self.redis.smembers(index))
            outcome = int(script(keys=[*head, *sessions], args=args))
            if outcome != _SESSIONS_CHANGED:
                return outcome
        raise redis.WatchError(f"the sessions of {name} kept changing; try again")


# -- the audit log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    at: int  # ms
    actor: str  # a console user, or "cli:<login>"
    action: str  # dotted: user.create, user.role, flow.publish, customer.put…
    target: str
    before: Any
    after: Any


def _secret_fields(value: Any) -> set[str]:
    """Names of password-like fields anywhere in a JSON value."""
    if isinstance(value, dict):
        found = {str(k) for k in value if str(k).lower() in _SECRET_AUDIT_FIELDS}
        for item in value.values():
            found |= _secret_fields(item)
        return found
    if isinstance(value, list | tuple):
        return set().union(*map(_secret_fields, value)) if value else set()
    return set()


class AuditLog:
    """Every change made in the console or through `ivr` commands, newest first, capped."""

    def __init__(self, client: RedisClient, cap: int = 10_000):
        if cap < 1:
            raise ValueError("the audit log keeps at least one entry")
        self.redis = client
        self.cap = cap

    def record(
        self, actor: str, action: str, target: str, *, before: Any = None, after: Any = None
    ) -> None:
        """Add an entry; `before` and `after` must be JSON values, never a password or hash."""
        leaked = _secret_fields(before) | _secret_fields(after)
        if leaked:
            raise ValueError(f"an audit entry never holds {', '.join(sorted(leaked))}")
        entry = json.dumps(
            {
                "at": _now_ms(),
                "actor": actor,
                "action": action,
                "target": target,
                "before": before,
                "after": after,
            }
        )
        pipe = self.redis.pipeline(transaction=True)  # MULTI: one key, never over the cap
        pipe.lpush(keys.audit_log(), entry)
        pipe.ltrim(keys.audit_log(), 0, self.cap - 1)
        pipe.execute()

    def entries(self, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        """Up to `limit` entries, newest first, skipping the `offset` newest."""
        if limit < 1 or offset < 0:
            return []
        raw = self.redis.lrange(keys.audit_log(), offset, offset + limit - 1)
        return [AuditEntry(**json.loads(item)) for item in raw]


def ensure_development_admin(users: Users, instance_path: Path) -> Path | None:
    """When no user exists, create `admin` with a generated password kept in the instance
    folder (mode 0600) and return that file; with users, the file if it is there, else None.
    Safe when several workers race: only one creates the user, and only its creator writes."""
    path = Path(instance_path) / ADMIN_PASSWORD_FILE
    if users.count() == 0:
        password = secrets.token_urlsafe(18)
        try:
            users.create(DEVELOPMENT_ADMIN, Role.ADMIN, password)
        except UserError:
            # Another worker made it first: give it a moment to write the file.
            deadline = time.monotonic() + 2
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            _write_private(path, password + "\n")
            return path
    return path if path.exists() else None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, mode 0600, atomically: a reader sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(text)
        # Replace, not link as config._instance_secret does: a file left from an earlier
        # (flushed) Redis holds a password that no longer works.
        os.replace(draft, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            draft.unlink()
