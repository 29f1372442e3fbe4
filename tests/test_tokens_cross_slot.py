"""API tokens across slots: a name's claim and the token's record are written in order (name,
then record; revoke: record, then name), so a crash between steps never leaves a working token
nobody can revoke, nor a name blocked for good."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest

from ivr import keys
from ivr.claims import CLAIM_GRACE_MS
from ivr.tokens import ApiTokens
from tests.conftest import SECRET_KEY, plain_client
from tests.test_customers_cross_slot import Clock

DIGEST = "ab" * 32


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(redis_client, clock) -> ApiTokens:
    return ApiTokens(redis_client, SECRET_KEY.encode(), "env-token-0123456789", clock_ms=clock)


def test_an_issued_token_is_found_by_its_record_and_listed(tokens):
    token = tokens.issue("billing")
    assert tokens.identify(token) == "billing"
    assert [t.name for t in tokens.list()] == ["billing"]
    assert tokens.revoke("billing") is True
    assert tokens.identify(token) is None
    assert tokens.list() == []


def test_a_name_claimed_by_a_crashed_issue_is_free_again_once_stale(tokens, clock):
    tokens.claim_name("billing", DIGEST)  # ... and the issuer dies before the record
    assert tokens.list() == []
    with pytest.raises(ValueError, match="exists"):
        tokens.issue("billing")  # in flight: it may be written in a moment
    assert tokens.revoke("billing") is False
    clock.advance(CLAIM_GRACE_MS + 1)
    token = tokens.issue("billing")
    assert tokens.identify(token) == "billing"


def test_revoke_clears_a_stale_claim_left_by_a_crash(tokens, redis_client, clock):
    tokens.claim_name("billing", DIGEST)
    clock.advance(CLAIM_GRACE_MS + 1)
    assert tokens.revoke("billing") is False, "no token was revoked"
    assert not redis_client.hexists(
        keys.api_token_names(keys.api_token_name_shard("billing")), "billing"
    )


def test_a_revoke_that_crashed_after_the_record_leaves_the_name_reusable(
    tokens, redis_client, clock
):
    token = tokens.issue("billing")
    clock.advance(CLAIM_GRACE_MS + 1)
    digest = tokens._digest(token)
    # revoke's first step alone: the record goes, the token stops working
    redis_client.hdel(keys.api_tokens(keys.api_token_shard(digest)), digest)
    assert tokens.identify(token) is None
    assert tokens.identify(tokens.issue("billing")) == "billing"


def test_a_live_token_keeps_its_name_however_old(tokens, clock):
    tokens.issue("billing")
    clock.advance(100 * CLAIM_GRACE_MS)
    with pytest.raises(ValueError, match="exists"):
        tokens.issue("billing")


def test_racing_issuers_get_one_token_per_name(redis_url, redis_client):
    issued: list[str] = []
    start = threading.Barrier(4)

    def issue() -> None:
        client = plain_client(redis_url, decode_responses=True)
        tokens = ApiTokens(client, SECRET_KEY.encode(), "env-token-0123456789")
        start.wait(timeout=10)
        with contextlib.suppress(ValueError):
            issued.append(tokens.issue("billing"))

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    tokens = ApiTokens(redis_client, SECRET_KEY.encode(), "env-token-0123456789")
    assert len(issued) == 1
    assert [t.name for t in tokens.list()] == ["billing"]


def test_the_single_slot_layout_is_migrated_once(tokens, redis_client):
    digest = tokens._digest("ivr_old-token")
    redis_client.hset(
        keys.legacy_api_tokens(), digest, json.dumps({"name": "crm", "created_at": 1700000000})
    )
    redis_client.hset(keys.legacy_api_token_names(), "crm", digest)
    assert tokens.migrate_legacy_layout() == 1
    assert tokens.identify("ivr_old-token") == "crm"
    assert not redis_client.exists(keys.legacy_api_tokens(), keys.legacy_api_token_names())
    assert tokens.migrate_legacy_layout() == 0
    assert tokens.revoke("crm") is True
    assert tokens.identify("ivr_old-token") is None


def test_tokens_are_spread_over_slots(tokens, redis_client):
    from redis.crc import key_slot

    for number in range(20):
        tokens.issue(f"client-{number}")
    stored = list(redis_client.scan_iter("ivr:{api-token*"))
    assert len({key_slot(key.encode()) for key in stored}) > 4
