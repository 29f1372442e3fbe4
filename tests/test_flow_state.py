"""Call state in Redis, and its sealed copy in step URLs: versions, compare-and-set, sealing."""

from __future__ import annotations

import pytest

from ivr.flows.state import MAX_SEALED_CHARS, CallState, CallStateStore
from tests.conftest import SECRET_KEY

CALL = "CA" + "1" * 32
OTHER_CALL = "CA" + "2" * 32


@pytest.fixture
def states(redis_client) -> CallStateStore:
    return CallStateStore(redis_client, 3600, SECRET_KEY.encode())


def a_state() -> CallState:
    return CallState(flow="default", node="menu", locale="en-US", caller="+14155550161")


def test_a_state_saved_is_loaded_back_with_its_version(states):
    state = a_state()
    replaces = states.advance(state, 1)
    assert replaces == "" and state.version.startswith("1.")
    assert states.save(CALL, state, replaces=replaces)
    loaded = states.load(CALL)
    assert loaded == state


def test_saving_is_a_compare_and_set_on_the_version(states):
    first = a_state()
    assert states.save(CALL, first, replaces=states.advance(first, 1))
    again = a_state()
    assert not states.save(CALL, again, replaces=states.advance(again, 1)), "already has state"

    one, two = states.load(CALL), states.load(CALL)
    assert states.save(CALL, one, replaces=states.advance(one, 2))
    assert not states.save(CALL, two, replaces=states.advance(two, 2)), "lost the race"
    assert states.load(CALL).version == one.version


def test_a_new_call_is_listed_among_the_recent_calls_once_with_its_start(states):
    first = a_state()
    turn = {"at": 1_700_000_000_123, "step": 0, "nodes": ["welcome"]}
    assert states.save(CALL, first, replaces=states.advance(first, 1), turn=turn)
    again = a_state()
    later = turn | {"at": 1_700_000_009_999}
    assert not states.save(CALL, again, replaces=states.advance(again, 1), turn=later)
    moved = states.load(CALL)
    assert states.save(CALL, moved, replaces=states.advance(moved, 2), turn=later)
    listed = states.recent()
    assert [(sid, started) for sid, _, started in listed] == [(CALL, 1_700_000_000_123)]
    assert listed[0][1].step == 2, "the state listed is the current one"
    assert len(states.journey(CALL)) == 2, "the refused creation added no turn"


def test_a_save_after_redis_lost_its_scripts_loads_the_script_and_saves_once(states, redis_client):
    state = a_state()
    assert states.save(CALL, state, replaces=states.advance(state, 1), turn={"at": 1})
    redis_client.script_flush()  # a restarted or failed-over Redis
    moved = states.load(CALL)
    assert states.save(CALL, moved, replaces=states.advance(moved, 2), turn={"at": 2})
    assert states.load(CALL).version == moved.version
    assert [turn["at"] for turn in states.journey(CALL)] == [1, 2]


def test_is_current_knows_a_stale_copy(states):
    state = a_state()
    states.save(CALL, state, replaces=states.advance(state, 1))
    copy = states.unseal(CALL, states.seal(CALL, state))
    assert states.is_current(CALL, copy)
    moved = states.load(CALL)
    states.save(CALL, moved, replaces=states.advance(moved, 2))
    assert not states.is_current(CALL, copy)
    assert not states.is_current(OTHER_CALL, copy)


def test_a_sealed_state_opens_only_for_its_call_and_key(states, redis_client):
    state = a_state()
    states.advance(state, 3)
    state.here = {"verification": "VE" + "0" * 32, "failures": 1}
    token = states.seal(CALL, state)
    assert token and "=" not in token and "+" not in token and "/" not in token
    assert states.unseal(CALL, token) == state
    assert states.unseal(OTHER_CALL, token) is None, "bound to its CallSid"
    other_key = CallStateStore(redis_client, 3600, b"another-secret-key-" + b"y" * 32)
    assert other_key.unseal(CALL, token) is None
    for garbage in ("", "!!!", token[:-2], token[::-1], "A" * (MAX_SEALED_CHARS + 1)):
        assert states.unseal(CALL, garbage) is None


def test_the_sealed_state_holds_nothing_readable(states):
    state = a_state()
    state.customer_name = "Ada Lovelace"
    states.advance(state, 1)
    token = states.seal(CALL, state)
    assert "Ada" not in token and "4155550161" not in token


def test_a_state_too_big_for_a_url_is_not_sealed(states):
    state = a_state()
    state.variables = {f"field{i}": f"{i:020d}" for i in range(40)}
    states.advance(state, 1)
    assert states.seal(CALL, state) is None
