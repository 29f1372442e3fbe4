"""Console users, sessions and the audit log (ivr.users), against a real Redis."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import argon2
import pytest
import redis
from argon2 import PasswordHasher
from redis.crc import key_slot

from ivr import keys
from ivr.users import (
    ADMIN_PASSWORD_FILE,
    END_SESSIONS,
    AuditEntry,
    AuditLog,
    Role,
    Session,
    UserError,
    Users,
    ensure_development_admin,
)
from tests.conftest import plain_client
from tests.console_helpers import CHEAP_HASHER

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "tr0ub4dor & 3 more words"
START_MS = 1_700_000_000_000


class Clock:
    """A clock the test moves by hand (ms since the epoch)."""

    def __init__(self, now: int = START_MS):
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class CountingHasher(PasswordHasher):
    """A cheap Argon2id hasher that counts its work."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.hashed = 0
        self.verified = 0

    def hash(self, password, *, salt=None):  # type: ignore[override]
        self.hashed += 1
        return super().hash(password, salt=salt)

    def verify(self, hash, password):  # type: ignore[override]
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def users(redis_client: redis.Redis) -> Users:
    return Users(redis_client, hasher=CHEAP_HASHER)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_users(redis_client: redis.Redis, clock: Clock) -> Users:
    """Users on the test's clock: 10-minute idle expiry, 1-hour absolute expiry."""
    return Users(
        redis_client,
        session_idle_seconds=600,
        session_max_seconds=3600,
        hasher=CHEAP_HASHER,
        clock_ms=clock,
    )


def everything_in(client: redis.Redis) -> str:
    """Every key name and every value in the database, as one text."""
    parts = []
    for key in client.scan_iter("*"):
        parts.append(key)
        kind = client.type(key)
        if kind == "string":
            parts.append(client.get(key) or "")
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "set":
            parts.extend(client.smembers(key))
        elif kind == "list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == "zset":
            parts.extend(client.zrange(key, 0, -1))
        else:
            pytest.fail(f"unexpected {kind} at {key}")
    return "\n".join(parts)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


def run_together(*calls: Callable[[], object]) -> list[object]:
    """Run each call in its own thread, released at once; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


# -- users ---------------------------------------------------------------------------------------


def test_a_created_user_is_read_back_by_any_case_of_its_name(users):
    created = users.create("Alice", "editor", PASSWORD)
    assert created.name == "alice"
    assert created.role is Role.EDITOR
    assert created.created_at == created.password_changed_at > 0
    assert users.get("alice") == created
    assert users.get("ALICE") == created
    assert users.get("bob") is None
    assert users.get("not a name!") is None


def test_list_is_sorted_by_name_and_count_counts(users):
    for name, role in (("carol", Role.VIEWER), ("alice", Role.ADMIN), ("bob.smith", "editor")):
        users.create(name, role, PASSWORD)
    assert [(u.name, u.role) for u in users.list()] == [
        ("alice", Role.ADMIN),
        ("bob.smith", Role.EDITOR),
        ("carol", Role.VIEWER),
    ]
    assert users.count() == 3


def test_no_users_at_first(users):
    assert users.list() == []
    assert users.count() == 0


def test_each_role_allows_what_the_roles_beneath_it_allow():
    assert Role.ADMIN.allows(Role.EDITOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.EDITOR.allows(Role.EDITOR) and Role.EDITOR.allows(Role.VIEWER)
    assert not Role.EDITOR.allows(Role.ADMIN)
    assert Role.VIEWER.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.EDITOR)


def test_a_taken_name_is_refused_whatever_its_case(users):
    users.create("alice", Role.VIEWER, PASSWORD)
    with pytest.raises(UserError) as refused:
        users.create("ALICE", Role.ADMIN, OTHER_PASSWORD)
    assert refused.value.reason == "name_taken"
    assert str(refused.value) == "user alice already exists"
    assert users.get("alice").role is Role.VIEWER
    assert users.authenticate("alice", PASSWORD) is not None


@pytest.mark.parametrize(
    "name", ["a", "1alice", "_alice", "al ice", "alice!", "a" * 33, "élodie", "", "al/ice"]
)
def test_invalid_names_are_refused(users, name):
    with pytest.raises(UserError) as refused:
        users.create(name, Role.VIEWER, PASSWORD)
    assert refused.value.reason == "invalid_name"
    assert users.count() == 0


def test_names_may_hold_digits_dots_dashes_and_underscores(users):
    assert users.create("j.doe-2_x", Role.VIEWER, PASSWORD).name == "j.doe-2_x"
    assert users.create("ab", Role.VIEWER, PASSWORD).name == "ab"
    assert users.create("a" * 32, Role.VIEWER, PASSWORD).name == "a" * 32


def test_an_unknown_role_is_refused(users):
    with pytest.raises(UserError) as refused:
        users.create("alice", "superuser", PASSWORD)
    assert refused.value.reason == "invalid_role"
    assert users.create("alice", " Admin ", PASSWORD).role is Role.ADMIN


@pytest.mark.parametrize("password", ["short pass", "a" * 11, "x" * 40, "x" * 1025, ""])
def test_weak_passwords_are_refused(users, password):
    with pytest.raises(UserError) as refused:
        users.create("alice", Role.VIEWER, password)
    assert refused.value.reason == "weak_password"
    assert users.get("alice") is None


def test_the_longest_password_is_accepted(users):
    long_password = ("0123456789" * 103)[:1024]
    users.create("alice", Role.VIEWER, long_password)
    assert users.authenticate("alice", long_password) is not None


def test_the_production_hasher_is_argon2id(redis_client):
    users = Users(redis_client)  # argon2-cffi's defaults
    users.create("alice", Role.VIEWER, PASSWORD)
    stored = redis_client.hget(keys.console_user("alice"), "hash")
    assert stored.startswith("$argon2id$")
    assert argon2.extract_parameters(stored).type is argon2.Type.ID


def test_the_password_is_nowhere_in_redis_only_its_argon2id_hash(users, redis_client):
    users.create("alice", Role.ADMIN, PASSWORD)
    users.set_password("alice", OTHER_PASSWORD)
    users.open_session(users.authenticate("alice", OTHER_PASSWORD))
    AuditLog(redis_client).record("cli:test", "user.password", "alice")
    assert redis_client.hget(keys.console_user("alice"), "hash").startswith("$argon2id$")
    stored = everything_in(redis_client)
    assert PASSWORD not in stored
    assert OTHER_PASSWORD not in stored


def test_the_right_password_signs_in(users):
    created = users.create("alice", Role.EDITOR, PASSWORD)
    assert users.authenticate("alice", PASSWORD) == created
    assert users.authenticate(" Alice ", PASSWORD) == created


def test_a_wrong_password_and_an_unknown_user_both_get_none_for_the_same_work(redis_client):
    hasher = CountingHasher()
    users = Users(redis_client, hasher=hasher)
    users.create("alice", Role.VIEWER, PASSWORD)
    hasher.hashed = hasher.verified = 0
    for name, password in (
        ("alice", OTHER_PASSWORD),
        ("nobody", PASSWORD),
        ("not a name!", PASSWORD),
        ("alice", ""),
        ("alice", PASSWORD + "x" * 2000),
    ):
        before = hasher.verified
        assert users.authenticate(name, password) is None, (name, password)
        assert hasher.verified == before + 1, name  # one Argon2 check, whoever asks
    assert hasher.hashed == 1  # the dummy hash, made once


def test_a_processs_first_sign_in_costs_the_same_for_a_stranger(redis_client):
    costs = []
    for name, password in (("nobody", PASSWORD), ("alice", OTHER_PASSWORD)):
        hasher = CountingHasher()
        users = Users(redis_client, hasher=hasher)
        if users.get("alice") is None:
            users.create("alice", Role.VIEWER, PASSWORD)
        hasher.hashed = hasher.verified = 0
        assert users.authenticate(name, password) is None
        costs.append((hasher.hashed, hasher.verified))
    assert costs[0] == costs[1] == (1, 1)


def test_a_hash_with_weaker_parameters_is_replaced_at_sign_in(users, redis_client):
    users.create("alice", Role.VIEWER, PASSWORD)
    old = redis_client.hget(keys.console_user("alice"), "hash")
    users.hasher = PasswordHasher(time_cost=2, memory_cost=8192, parallelism=1)
    assert users.authenticate("alice", PASSWORD) is not None
    new = redis_client.hget(keys.console_user("alice"), "hash")
    assert new != old
    assert argon2.extract_parameters(new).time_cost == 2
    assert users.authenticate("alice", PASSWORD) is not None
    assert redis_client.hget(keys.console_user("alice"), "hash") == new  # no rehash needed now


def test_a_rehash_never_undoes_a_password_change_made_meanwhile(users):
    users.create("alice", Role.VIEWER, PASSWORD)

    class ChangedMeanwhile(PasswordHasher):
        def check_needs_rehash(self, _hash):  # type: ignore[override]
            users.set_password("alice", OTHER_PASSWORD)  # another admin, just now
            return True

    users.hasher = ChangedMeanwhile(time_cost=1, memory_cost=8192, parallelism=1)
    assert users.authenticate("alice", PASSWORD) is not None  # it was right when checked
    users.hasher = CHEAP_HASHER
    assert users.authenticate("alice", PASSWORD) is None
    assert users.authenticate("alice", OTHER_PASSWORD) is not None


def test_a_new_password_replaces_the_old(clock, timed_users):
    created = timed_users.create("alice", Role.VIEWER, PASSWORD)
    clock.advance(5)
    changed = timed_users.set_password("ALICE", OTHER_PASSWORD)
    assert changed.password_changed_at == created.password_changed_at + 5000
    assert changed.created_at == created.created_at
    assert timed_users.authenticate("alice", PASSWORD) is None
    assert timed_users.authenticate("alice", OTHER_PASSWORD) == changed


def test_changes_to_an_unknown_user_are_refused_and_create_nothing(users, redis_client):
    for change in (
        lambda: users.set_role("ghost", Role.ADMIN),
        lambda: users.set_password("ghost", PASSWORD),
    ):
        with pytest.raises(UserError) as refused:
            change()
        assert refused.value.reason == "not_found"
    assert users.delete("ghost") is False
    assert users.delete("not a name!") is False
    assert redis_client.exists(keys.console_user("ghost")) == 0


def test_a_deleted_user_is_gone_and_its_name_free(users):
    users.create("admin", Role.ADMIN, PASSWORD)
    users.create("alice", Role.EDITOR, PASSWORD)
    assert users.delete("Alice") is True
    assert users.get("alice") is None
    assert [u.name for u in users.list()] == ["admin"]
    assert users.authenticate("alice", PASSWORD) is None
    assert users.create("alice", Role.VIEWER, OTHER_PASSWORD).role is Role.VIEWER


# -- the last admin ------------------------------------------------------------------------------


def test_the_last_admin_can_be_neither_deleted_nor_demoted(users):
    users.create("ada", Role.ADMIN, PASSWORD)
    users.create("eddie", Role.EDITOR, PASSWORD)
    for change in (lambda: users.delete("ada"), lambda: users.set_role("ada", Role.EDITOR)):
        with pytest.raises(UserError) as refused:
            change()
        assert refused.value.reason == "last_admin"
    assert users.get("ada").role is Role.ADMIN
    assert users.set_role("ada", Role.ADMIN).role is Role.ADMIN  # staying admin is fine


def test_with_another_admin_an_admin_may_go(users):
    users.create("ada", Role.ADMIN, PASSWORD)
    users.create("bob", Role.EDITOR, PASSWORD)
    assert users.set_role("bob", Role.ADMIN).role is Role.ADMIN
    assert users.set_role("ada", Role.VIEWER).role is Role.VIEWER
    assert users.get("ada").role is Role.VIEWER
    with pytest.raises(UserError):
        users.delete("bob")
    users.set_role("ada", Role.ADMIN)
    assert users.delete("bob") is True


def test_two_admins_demoting_each_other_at_once_leave_one_admin(users, redis_url):
    users.create("ada", Role.ADMIN, PASSWORD)
    users.create("bob", Role.ADMIN, PASSWORD)
    other = Users(plain_client(redis_url, decode_responses=True))  # another host
    results = run_together(lambda: users.set_role("ada", Role.EDITOR), lambda: other.delete("bob"))
    refusals = [r for r in results if isinstance(r, UserError)]
    assert len(refusals) == 1, results
    assert refusals[0].reason == "last_admin"
    assert [u.name for u in users.list() if u.role is Role.ADMIN] in (["ada"], ["bob"])


# -- sessions ------------------------------------------------------------------------------------


def test_a_session_is_found_by_its_token(users):
    user = users.create("alice", Role.EDITOR, PASSWORD)
    opened = users.open_session(user)
    assert isinstance(opened, Session)
    assert opened.user == "alice"
    assert opened.role is Role.EDITOR
    assert opened.token.startswith("alice.")
    assert len(opened.csrf_token) >= 43
    assert opened.expires_at - opened.created_at == 24 * 3600 * 1000
    assert users.session(opened.token) == opened


def test_every_session_has_its_own_token_and_csrf_token(users):
    user = users.create("alice", Role.EDITOR, PASSWORD)
    first, second = users.open_session(user), users.open_session(user)
    assert first.token != second.token
    assert first.csrf_token != second.csrf_token
    assert users.session(first.token).csrf_token == first.csrf_token
    assert users.session(second.token).csrf_token == second.csrf_token


def test_a_dotted_user_name_keeps_its_sessions(users):
    opened = users.open_session(users.create("jane.doe", Role.VIEWER, PASSWORD))
    assert users.session(opened.token).user == "jane.doe"
    users.close_session(opened.token)
    assert users.session(opened.token) is None


@pytest.mark.parametrize(
    "token", ["", ".", "alice", "alice.", ".secret", "ALICE.secret", "alice." + "x" * 300]
)
def test_a_garbage_or_forged_token_finds_nothing(users, token):
    users.open_session(users.create("alice", Role.VIEWER, PASSWORD))
    assert users.session(token) is None
    users.close_session(token)  # and closes nothing, without error


def test_a_token_with_another_users_name_finds_nothing(users):
    opened = users.open_session(users.create("alice", Role.ADMIN, PASSWORD))
    users.create("bob", Role.VIEWER, PASSWORD)
    secret = opened.token.rpartition(".")[2]
    assert users.session(f"bob.{secret}") is None
    assert users.session(opened.token) is not None


def test_no_session_token_is_in_any_key_name_or_value(users, redis_client):
    user = users.create("alice", Role.VIEWER, PASSWORD)
    opened = [users.open_session(user) for _ in range(3)]
    names = list(redis_client.scan_iter("*"))
    stored = everything_in(redis_client)
    for session in opened:
        secret = session.token.rpartition(".")[2]
        assert not any(secret in name for name in names)
        assert secret not in stored
        assert users.session(session.token) is not None


def test_a_session_expires_when_idle(redis_client):
    users = Users(redis_client, session_idle_seconds=1, hasher=CHEAP_HASHER)
    opened = users.open_session(users.create("alice", Role.VIEWER, PASSWORD))
    assert users.session(opened.token) is not None
    wait_until(lambda: users.session(opened.token) is None)
    assert not list(redis_client.scan_iter("*:session:*"))
    assert redis_client.smembers(keys.console_user_sessions("alice")) == set()
    assert users.get("alice") is not None


def test_using_a_session_pushes_its_idle_expiry_back(timed_users, clock):
    opened = timed_users.open_session(timed_users.create("alice", Role.VIEWER, PASSWORD))
    for _ in range(5):  # 25 minutes of use, each within the 10-minute idle expiry
        clock.advance(300)
        assert timed_users.session(opened.token) is not None
    clock.advance(601)
    assert timed_users.session(opened.token) is None
    clock.advance(-601)  # once gone, it stays gone
    assert timed_users.session(opened.token) is None


def test_a_use_within_a_minute_of_the_last_moves_nothing(timed_users, clock):
    opened = timed_users.open_session(timed_users.create("alice", Role.VIEWER, PASSWORD))
    clock.advance(30)
    assert timed_users.session(opened.token) is not None  # too soon to write
    clock.advance(571)  # 601 s after opening, 571 s after that use
    assert timed_users.session(opened.token) is None


def test_a_session_ends_at_its_absolute_expiry_however_busy(timed_users, clock):
    opened = timed_users.open_session(timed_users.create("alice", Role.VIEWER, PASSWORD))
    assert opened.expires_at == START_MS + 3600 * 1000
    for _ in range(11):
        clock.advance(300)
        assert timed_users.session(opened.token) is not None
    clock.advance(300)  # 3600 s after opening
    assert timed_users.session(opened.token) is None


def test_the_idle_expiry_is_kept_by_redis_too(timed_users, redis_client):
    opened = timed_users.open_session(timed_users.create("alice", Role.VIEWER, PASSWORD))
    key = next(k for k in redis_client.scan_iter("*:session:*"))
    assert 599_000 < redis_client.pttl(key) <= 600_000
    assert timed_users.session(opened.token) is not None


def test_signing_out_ends_that_session_only(users):
    user = users.create("alice", Role.VIEWER, PASSWORD)
    here, there = users.open_session(user), users.open_session(user)
    users.close_session(here.token)
    assert users.session(here.token) is None
    assert users.session(there.token) is not None
    users.close_session(here.token)  # twice is fine


def test_close_sessions_ends_every_session_of_a_user(users):
    alice = users.create("alice", Role.VIEWER, PASSWORD)
    bob = users.create("bob", Role.VIEWER, PASSWORD)
    mine = [users.open_session(alice) for _ in range(3)]
    theirs = users.open_session(bob)
    assert users.close_sessions("Alice") == 3
    assert all(users.session(s.token) is None for s in mine)
    assert users.session(theirs.token) is not None
    assert users.close_sessions("alice") == 0
    assert users.close_sessions("not a name!") == 0


def test_deleting_a_user_ends_every_session_on_every_host(users, redis_client, redis_url):
    users.create("ada", Role.ADMIN, PASSWORD)
    alice = users.create("alice", Role.EDITOR, PASSWORD)
    sessions = [users.open_session(alice) for _ in range(2)]
    elsewhere = Users(plain_client(redis_url, decode_responses=True))  # another host
    assert elsewhere.delete("alice")
    assert all(users.session(s.token) is None for s in sessions)
    assert not list(redis_client.scan_iter(keys.console_user_sessions("alice")))
    assert not list(redis_client.scan_iter("*{user:alice}*"))


def test_a_user_made_again_under_the_same_name_gets_no_old_session(timed_users, clock):
    timed_users.create("ada", Role.ADMIN, PASSWORD)
    old = timed_users.create("alice", Role.ADMIN, PASSWORD)
    timed_users.delete("alice")
    clock.advance(1)
    timed_users.create("alice", Role.ADMIN, PASSWORD)
    late = timed_users.open_session(old)  # a sign-in that raced the deletion
    assert timed_users.session(late.token) is None


def test_changing_the_password_ends_every_session(users):
    user = users.create("alice", Role.EDITOR, PASSWORD)
    sessions = [users.open_session(user) for _ in range(2)]
    users.set_password("alice", OTHER_PASSWORD)
    assert all(users.session(s.token) is None for s in sessions)
    fresh = users.open_session(users.authenticate("alice", OTHER_PASSWORD))
    assert users.session(fresh.token) is not None


def test_a_sign_in_that_raced_a_password_change_gets_no_lasting_session(timed_users, clock):
    signed_in = timed_users.authenticate(
        timed_users.create("alice", Role.EDITOR, PASSWORD).name, PASSWORD
    )
    clock.advance(1)
    timed_users.set_password("alice", OTHER_PASSWORD)  # meanwhile, an admin resets it
    late = timed_users.open_session(signed_in)
    assert timed_users.session(late.token) is None


def test_an_open_session_sees_a_new_role_at_once(users):
    users.create("ada", Role.ADMIN, PASSWORD)
    opened = users.open_session(users.create("eddie", Role.EDITOR, PASSWORD))
    users.set_role("eddie", Role.VIEWER)
    assert users.session(opened.token).role is Role.VIEWER
    users.set_role("eddie", "admin")
    assert users.session(opened.token).role is Role.ADMIN


def test_every_key_of_a_user_shares_one_cluster_slot(users, redis_client):
    users.open_session(users.create("alice", Role.VIEWER, PASSWORD))
    names = [k for k in redis_client.scan_iter("*") if "{user:alice}" in k]
    assert len(names) == 3  # the user, its session index, one session
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"user:alice")}
    assert key_slot(keys.console_user_names().encode()) == key_slot(
        keys.console_users_lock().encode()
    )


def test_ending_sessions_refuses_a_read_of_the_index_that_missed_a_sign_in(users, redis_client):
    """A script reaches only the session keys it was given: one that missed a session opened
    since its caller read the index changes nothing, and the caller reads again."""
    opened = users.open_session(users.create("alice", Role.VIEWER, PASSWORD))
    end_sessions = redis_client.register_script(END_SESSIONS)
    assert end_sessions(keys=[keys.console_user_sessions("alice")]) == -2
    assert users.session(opened.token) is not None
    assert users.close_sessions("alice") == 1
    assert users.session(opened.token) is None


def test_expired_sessions_leave_the_index_at_the_next_sign_in(timed_users, clock, redis_client):
    alice = timed_users.create("alice", Role.VIEWER, PASSWORD)
    old = timed_users.open_session(alice)
    index = keys.console_user_sessions("alice")
    [old_key] = redis_client.smembers(index)
    redis_client.delete(old_key)  # as its expiry would
    timed_users.open_session(alice)
    assert old_key not in redis_client.smembers(index)
    assert len(redis_client.smembers(index)) == 1
    assert timed_users.session(old.token) is None


# -- the development admin -----------------------------------------------------------------------


def test_a_development_admin_is_made_once_by_racing_workers(redis_client, tmp_path):
    instance = tmp_path / "instance"
    workers = [Users(redis_client, hasher=CHEAP_HASHER) for _ in range(8)]
    results = run_together(*(lambda w=w: ensure_development_admin(w, instance) for w in workers))
    path = instance / ADMIN_PASSWORD_FILE
    assert all(r in (path, None) for r in results), results
    assert path in results
    assert [(u.name, u.role) for u in workers[0].list()] == [("admin", Role.ADMIN)]
    assert sorted(os.listdir(instance)) == [ADMIN_PASSWORD_FILE]  # no drafts left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text(encoding="ascii").strip()
    assert len(password) >= 24
    assert workers[0].authenticate("admin", password) is not None
    assert ensure_development_admin(workers[0], instance) == path  # later starts: the file


def test_no_development_admin_when_users_exist(users, tmp_path):
    users.create("alice", Role.ADMIN, PASSWORD)
    assert ensure_development_admin(users, tmp_path) is None
    assert not (tmp_path / ADMIN_PASSWORD_FILE).exists()
    assert [u.name for u in users.list()] == ["alice"]


def test_a_stale_admin_password_file_is_replaced(users, tmp_path):
    stale = tmp_path / ADMIN_PASSWORD_FILE
    stale.write_text("from a Redis long gone\n", encoding="ascii")
    assert ensure_development_admin(users, tmp_path) == stale
    assert users.authenticate("admin", stale.read_text(encoding="ascii").strip()) is not None
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600


def test_a_deleted_password_file_is_not_reported(users, tmp_path):
    path = ensure_development_admin(users, tmp_path)
    assert isinstance(path, Path)
    path.unlink()
    assert ensure_development_admin(users, tmp_path) is None


def _development(redis_client: redis.Redis, instance: Path) -> tuple[Users, Path]:
    users = Users(
        redis_client, hasher=CHEAP_HASHER, development_password_file=instance / ADMIN_PASSWORD_FILE
    )
    path = ensure_development_admin(users, instance)
    assert path is not None and path.exists()
    users.create("alice", Role.ADMIN, PASSWORD)
    return users, path


def test_a_new_password_for_the_development_admin_deletes_the_stale_file(redis_client, tmp_path):
    users, path = _development(redis_client, tmp_path)
    users.set_password("alice", OTHER_PASSWORD)
    with pytest.raises(UserError):
        users.set_password("admin", "short")
    assert path.exists(), "another user's change, or a refused one, leaves the file"
    users.set_password("Admin", OTHER_PASSWORD)
    assert not path.exists()
    assert ensure_development_admin(users, tmp_path) is None, "the next start points to nothing"
    assert users.authenticate("admin", OTHER_PASSWORD) is not None


def test_deleting_the_development_admin_deletes_the_file(redis_client, tmp_path):
    users, path = _development(redis_client, tmp_path)
    users.delete("alice")
    with pytest.raises(UserError):
        users.delete("admin")  # the last admin stays, and so does the file
    assert path.exists()
    users.create("alice", Role.ADMIN, PASSWORD)
    assert users.delete("admin")
    assert not path.exists()


def test_without_a_development_file_a_password_change_touches_no_file(redis_client, tmp_path):
    users = Users(redis_client, hasher=CHEAP_HASHER)
    path = ensure_development_admin(users, tmp_path)
    users.set_password("admin", OTHER_PASSWORD)
    assert path is not None and path.exists()


# -- the audit log -------------------------------------------------------------------------------


def test_the_audit_log_lists_newest_first(redis_client):
    audit = AuditLog(redis_client)
    audit.record("cli:ops", "user.create", "alice", after={"role": "editor"})
    audit.record("ada", "user.role", "alice", before={"role": "editor"}, after={"role": "admin"})
    audit.record("ada", "flow.publish", "default", after={"version": 3, "tags": ["a", "b"]})
    entries = audit.entries()
    assert [e.action for e in entries] == ["flow.publish", "user.role", "user.create"]
    first = entries[2]
    assert isinstance(first, AuditEntry)
    assert (first.actor, first.target, first.before, first.after) == (
        "cli:ops",
        "alice",
        None,
        {"role": "editor"},
    )
    assert entries[0].after == {"version": 3, "tags": ["a", "b"]}
    assert entries[0].at >= entries[1].at >= entries[2].at > START_MS


def test_the_audit_log_is_capped_and_pages(redis_client):
    audit = AuditLog(redis_client, cap=3)
    for number in range(5):
        audit.record("ada", "customer.put", str(number))
    assert [e.target for e in audit.entries()] == ["4", "3", "2"]
    assert redis_client.llen(keys.audit_log()) == 3
    assert [e.target for e in audit.entries(limit=1, offset=1)] == ["3"]
    assert audit.entries(limit=0) == []
    assert audit.entries(offset=5) == []


def test_the_audit_log_refuses_passwords_and_hashes(redis_client):
    audit = AuditLog(redis_client)
    for before, after in (
        ({"password": PASSWORD}, None),
        (None, {"user": {"hash": "$argon2id$..."}}),
        (None, [{"Password_Hash": "x"}]),
    ):
        with pytest.raises(ValueError, match="never holds"):
            audit.record("ada", "user.password", "alice", before=before, after=after)
    with pytest.raises(TypeError):
        audit.record("ada", "flow.publish", "default", after={"when": object()})
    assert audit.entries() == []
