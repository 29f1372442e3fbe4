"""`ivr users …`: console users from a shell, every change in the audit log as cli:<login>."""

from __future__ import annotations

import getpass
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ivr.cli import main
from ivr.users import ADMIN_PASSWORD_FILE, AuditLog, Role, Users
from tests.conftest import (
    ACCOUNT_SID,
    API_TOKEN,
    AUTH_TOKEN,
    CALLER_ID,
    PUBLIC_BASE_URL,
    SECRET_KEY,
)
from tests.console_helpers import CHEAP_HASHER

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "tr0ub4dor & 3 more words"
ACTOR = f"cli:{getpass.getuser()}"


@pytest.fixture
def env(monkeypatch, redis_url, tmp_path) -> dict[str, str]:
    """A production-like environment (a Twilio account: no development admin) on the test
    Redis, for the CLI and for subprocesses alike."""
    values = {
        "REDIS_URL": redis_url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": SECRET_KEY,
        "IVR_API_TOKEN": API_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_CALLER_ID": CALLER_ID,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def users(env, redis_client) -> Users:
    """The same users the CLI sees (cheap hashing for what the test makes itself)."""
    return Users(redis_client, hasher=CHEAP_HASHER)


@pytest.fixture
def audit(redis_client) -> AuditLog:
    return AuditLog(redis_client)


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["users", *args], input=input)


def test_create_reads_the_password_from_stdin_and_audits(users, audit):
    result = run("create", "Alice", "--role", "editor", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "created alice (editor)\n"
    assert users.get("alice").role is Role.EDITOR
    assert users.authenticate("alice", PASSWORD) is not None
    [entry] = audit.entries()
    assert (entry.actor, entry.action, entry.target) == (ACTOR, "user.create", "alice")
    assert (entry.before, entry.after) == (None, {"role": "editor"})
    assert PASSWORD not in result.output


def test_a_windows_line_ending_is_not_part_of_the_password(users):
    assert run("create", "alice", "--role", "viewer", input=PASSWORD + "\r\n").exit_code == 0
    assert users.authenticate("alice", PASSWORD) is not None


def test_create_refuses_a_taken_name_without_asking_for_a_password(users, audit):
    users.create("alice", Role.VIEWER, PASSWORD)
    result = run("create", "ALICE", "--role", "admin", input=OTHER_PASSWORD + "\n")
    assert result.exit_code == 1
    assert result.stderr == "Error: user alice already exists\n"
    assert users.get("alice").role is Role.VIEWER
    assert audit.entries() == []


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["create", "al ice", "--role", "viewer"], PASSWORD, "a user name is 2 to 32"),
        (["create", "alice", "--role", "viewer"], "too short", "a password has 12 to 1024"),
        (["create", "alice", "--role", "viewer"], "z" * 20, "not one character repeated"),
        (["create", "alice", "--role", "viewer"], None, "no password on standard input"),
    ],
)
def test_create_explains_a_refusal_in_one_line(users, audit, args, stdin, message):
    result = run(*args, input=None if stdin is None else stdin + "\n")
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert users.count() == 0
    assert audit.entries() == []


def test_create_needs_a_known_role(users):
    assert run("create", "alice", input=PASSWORD + "\n").exit_code == 2
    result = run("create", "alice", "--role", "root", input=PASSWORD + "\n")
    assert result.exit_code == 2
    assert "admin" in result.stderr and "viewer" in result.stderr
    assert run("create", "alice", "--role", "ADMIN", input=PASSWORD + "\n").exit_code == 0
    assert users.get("alice").role is Role.ADMIN


def test_list_prints_every_user_sorted_never_a_hash(users):
    for name, role in (("carol", Role.VIEWER), ("ada", Role.ADMIN), ("bob.smith", Role.EDITOR)):
        users.create(name, role, PASSWORD)
    result = run("list")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:2] for row in rows] == [
        ["ada", "admin"],
        ["bob.smith", "editor"],
        ["carol", "viewer"],
    ]
    assert all(row[2].endswith("Z") and row[3].endswith("Z") for row in rows)
    assert "argon2" not in result.output


def test_delete_removes_the_user_and_ends_their_sessions(users, audit):
    users.create("ada", Role.ADMIN, PASSWORD)
    session = users.open_session(users.create("eddie", Role.EDITOR, PASSWORD))
    result = run("delete", "eddie")
    assert result.exit_code == 0, result.output
    assert "deleted eddie" in result.stdout
    assert users.get("eddie") is None
    assert users.session(session.token) is None
    [entry] = audit.entries()
    assert (entry.action, entry.target, entry.before) == (
        "user.delete",
        "eddie",
        {"role": "editor"},
    )


def test_delete_says_when_there_is_no_such_user(users, audit):
    result = run("delete", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "Error: no user ghost\n"
    assert audit.entries() == []


def test_the_last_admin_cannot_be_deleted_or_demoted(users, audit):
    users.create("ada", Role.ADMIN, PASSWORD)
    for args in (("delete", "ada"), ("role", "ada", "viewer")):
        result = run(*args)
        assert result.exit_code == 1, args
        assert "ada is the last admin" in result.stderr
    assert users.get("ada").role is Role.ADMIN
    assert audit.entries() == []


def test_password_changes_it_and_ends_every_session(users, audit):
    user = users.create("alice", Role.EDITOR, PASSWORD)
    sessions = [users.open_session(user) for _ in range(2)]
    result = run("password", "alice", input=OTHER_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "their sessions ended" in result.stdout
    assert all(users.session(s.token) is None for s in sessions)
    assert users.authenticate("alice", PASSWORD) is None
    assert users.authenticate("alice", OTHER_PASSWORD) is not None
    [entry] = audit.entries()
    assert (entry.actor, entry.action, entry.target) == (ACTOR, "user.password", "alice")
    assert (entry.before, entry.after) == (None, None)


def test_password_refuses_an_unknown_user_or_a_weak_password(users, audit):
    assert run("password", "ghost", input=OTHER_PASSWORD + "\n").stderr == "Error: no user ghost\n"
    users.create("alice", Role.EDITOR, PASSWORD)
    result = run("password", "alice", input="short\n")
    assert result.exit_code == 1
    assert "12 to 1024" in result.stderr
    assert users.authenticate("alice", PASSWORD) is not None
    assert audit.entries() == []


def test_role_applies_to_open_sessions_and_is_audited(users, audit):
    users.create("ada", Role.ADMIN, PASSWORD)
    session = users.open_session(users.create("eddie", Role.EDITOR, PASSWORD))
    result = run("role", "Eddie", "ADMIN")
    assert result.exit_code == 0, result.output
    assert result.stdout == "eddie is now admin\n"
    assert users.session(session.token).role is Role.ADMIN
    [entry] = audit.entries()
    assert (entry.action, entry.before, entry.after) == (
        "user.role",
        {"role": "editor"},
        {"role": "admin"},
    )
    assert run("role", "eddie", "admin").stdout == "eddie is already admin\n"
    assert len(audit.entries()) == 1


def test_role_refuses_an_unknown_user_or_role(users):
    assert run("role", "ghost", "admin").stderr == "Error: no user ghost\n"
    users.create("ada", Role.ADMIN, PASSWORD)
    assert run("role", "ada", "root").exit_code == 2


def test_in_development_the_console_admin_is_there_already(env, monkeypatch, users):
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_CALLER_ID"):
        monkeypatch.delenv(name)
    result = run("list")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("admin\tadmin\t")
    password = (Path(env["INSTANCE_PATH"]) / ADMIN_PASSWORD_FILE).read_text().strip()
    assert users.authenticate("admin", password) is not None


@pytest.fixture
def development(env, redis_client, monkeypatch) -> Path:
    """No Twilio account: the CLI's app makes the development admin and its password file."""
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_CALLER_ID"):
        monkeypatch.delenv(name)
    assert run("list").exit_code == 0
    path = Path(env["INSTANCE_PATH"]) / ADMIN_PASSWORD_FILE
    assert path.exists()
    return path


def test_a_new_admin_password_deletes_the_development_password_file(development, users):
    result = run("password", "admin", input=OTHER_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert not development.exists(), "the file would hold a password that no longer works"
    assert run("list").exit_code == 0 and not development.exists(), "nor comes back"
    assert users.authenticate("admin", OTHER_PASSWORD) is not None


def test_deleting_the_admin_deletes_the_development_password_file(development, users):
    assert run("create", "ada", "--role", "admin", input=PASSWORD + "\n").exit_code == 0
    assert run("password", "ada", input=OTHER_PASSWORD + "\n").exit_code == 0
    assert development.exists(), "another user's password is not in it"
    result = run("delete", "admin")
    assert result.exit_code == 0, result.output
    assert not development.exists()


def _read_until(fd: int, text: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no {text!r} from the command; it said {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the terminal closed: the command ended
            chunk = b""
        if not chunk:
            pytest.fail(f"the command ended before {text!r}; it said {seen!r}")
        seen += chunk
    return seen


def test_at_a_terminal_the_password_is_asked_twice_and_not_echoed(env, users):
    leader, follower = os.openpty()
    command = ["users", "create", "tess", "--role", "viewer"]
    process = subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, "-c", "from ivr.cli import main; main()", *command],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, **env},
        close_fds=True,
    )
    os.close(follower)
    try:
        said = _read_until(leader, b"Password: ")
        os.write(leader, PASSWORD.encode() + b"\n")
        said += _read_until(leader, b"Repeat for confirmation: ")
        os.write(leader, PASSWORD.encode() + b"\n")
        said += _read_until(leader, b"created tess (viewer)")
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert PASSWORD.encode() not in said
    assert users.authenticate("tess", PASSWORD) is not None
