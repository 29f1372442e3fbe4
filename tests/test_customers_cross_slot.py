"""The customer directory across slots: a crash between the steps of a put or a delete (claim
the phone, write the record, release the old phone) never lets two customers hold one phone nor
identifies a caller wrongly, and a claim it leaves behind is taken over once stale."""

from __future__ import annotations

import contextlib
import threading

import pytest

from ivr import keys
from ivr.claims import CLAIM_GRACE_MS, ClaimLapsed
from ivr.customers import Customer, CustomerDirectory, PhoneTaken
from tests.conftest import plain_client

ADA = Customer("12345678", "+14155550161", "Ada Lovelace")
GRACE = Customer("87654321", "+14155550142", "Grace Hopper")
NEW_PHONE = "+14155550199"


class Clock:
    """The directory's clock, moved by the test (no sleeping through a grace period)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(redis_client, clock) -> CustomerDirectory:
    return CustomerDirectory(redis_client, clock_ms=clock)


def test_a_claim_left_without_its_record_identifies_nobody_and_is_taken_over_once_stale(
    directory, clock
):
    [entry] = directory.claim_phones([ADA])  # ... and the writer dies before its record
    assert isinstance(entry, str)
    assert directory.find_by_phone(ADA.phone) is None
    assert directory.get(ADA.id) is None
    clock.advance(1000)
    with pytest.raises(PhoneTaken):  # in flight: it may be Ada's in a moment
        directory.put(Customer(GRACE.id, ADA.phone, GRACE.name))
    clock.advance(CLAIM_GRACE_MS)
    assert directory.put(Customer(GRACE.id, ADA.phone, GRACE.name)) is True
    assert directory.find_by_phone(ADA.phone).id == GRACE.id


def test_the_claimant_itself_may_finish_after_a_crash(directory, clock):
    directory.claim_phones([ADA])
    clock.advance(5000)
    assert directory.put(ADA) is True
    assert directory.find_by_phone(ADA.phone) == ADA


def test_a_move_that_crashed_before_releasing_the_old_phone_frees_it_for_others(directory, clock):
    directory.put(ADA)
    clock.advance(CLAIM_GRACE_MS + 1)
    moved = Customer(ADA.id, NEW_PHONE, ADA.name)
    [entry] = directory.claim_phones([moved])
    directory.write_records([(moved, entry)])  # ... and the release of the old phone never runs
    assert directory.find_by_phone(ADA.phone) is None, "the old entry is not believed"
    assert directory.find_by_phone(NEW_PHONE) == moved
    assert directory.put(Customer(GRACE.id, ADA.phone, GRACE.name)) is True
    assert directory.find_by_phone(ADA.phone).id == GRACE.id
    assert directory.get(ADA.id) == moved


def test_a_delete_that_crashed_before_releasing_the_phone_frees_it(directory, clock):
    directory.put(ADA)
    clock.advance(CLAIM_GRACE_MS + 1)
    assert directory.delete_record(ADA.id) is not None  # ... the release never runs
    assert directory.find_by_phone(ADA.phone) is None
    assert directory.search() == []
    assert directory.put(Customer(GRACE.id, ADA.phone, GRACE.name)) is True


def test_a_phone_whose_record_agrees_is_never_taken_over_however_old_its_claim(directory, clock):
    directory.put(ADA)
    clock.advance(10 * CLAIM_GRACE_MS)
    with pytest.raises(PhoneTaken) as raised:
        directory.put(Customer(GRACE.id, ADA.phone, GRACE.name))
    assert raised.value.holder == ADA.id
    assert directory.find_by_phone(ADA.phone) == ADA


def test_a_writer_too_slow_after_its_claim_writes_no_record(directory, clock):
    [entry] = directory.claim_phones([ADA])
    clock.advance(CLAIM_GRACE_MS // 2 + 1)
    with pytest.raises(ClaimLapsed):
        directory.write_records([(ADA, entry)])
    assert directory.get(ADA.id) is None


def test_a_stale_claim_refreshed_by_its_owner_is_not_taken_over(directory, clock):
    """The take-over names the exact entry it replaces: a claim renewed meanwhile wins."""
    directory.claim_phones([ADA])
    clock.advance(CLAIM_GRACE_MS + 1)
    directory.claim_phones([ADA])  # Ada's writer is back, just before Grace's take-over
    with pytest.raises(PhoneTaken):
        directory.put(Customer(GRACE.id, ADA.phone, GRACE.name))


def test_a_late_release_never_frees_a_phone_claimed_again(directory, clock):
    """Moving away and back at once: the first move's release names an older entry."""
    directory.put(ADA)
    clock.advance(1)
    moved = Customer(ADA.id, NEW_PHONE, ADA.name)
    [to_new] = directory.claim_phones([moved])
    [(old_phone, old_entry)] = directory.write_records([(moved, to_new)])
    clock.advance(1)
    directory.put(ADA)  # back to the old phone before the first move released it
    directory.release_phones([(old_phone, old_entry)])
    assert directory.find_by_phone(ADA.phone) == ADA


def _race(redis_url: str, contenders: list[Customer]) -> list[str]:
    """Put every contender at once, each through a client of its own; the ids that won."""
    start = threading.Barrier(len(contenders))
    won: list[str] = []

    def put(customer: Customer) -> None:
        directory = CustomerDirectory(plain_client(redis_url, decode_responses=True))
        start.wait(timeout=10)
        with contextlib.suppress(PhoneTaken):
            directory.put(customer)
            won.append(customer.id)

    threads = [threading.Thread(target=put, args=(c,)) for c in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won


def test_racing_customers_never_share_a_phone(redis_url, redis_client):
    directory = CustomerDirectory(redis_client)
    for round_number in range(5):
        phone = f"+1415555{2000 + round_number}"
        won = _race(
            redis_url, [Customer(f"{5000 + n}{round_number}", phone, "R") for n in range(4)]
        )
        on_file = [c for c in directory.search(phone, limit=100) if c.phone == phone]
        assert len(won) == 1 and [c.id for c in on_file] == won
        assert directory.find_by_phone(phone).id == won[0]


def test_the_single_slot_layout_is_migrated_once(directory, redis_client):
    """Before sharding: `ivr:{customers}:customer:<id>` hashes and one phone -> id hash."""
    for customer in (ADA, GRACE):
        redis_client.hset(
            keys.legacy_customer(customer.id),
            mapping={"id": customer.id, "phone": customer.phone, "name": customer.name, "sms": "1"},
        )
        redis_client.hset(keys.legacy_customer_phones(), customer.phone, customer.id)
    assert directory.migrate_legacy_layout() == 2
    assert directory.find_by_phone(ADA.phone) == ADA
    assert directory.get(GRACE.id) == GRACE
    assert not list(redis_client.scan_iter("ivr:{customers}:*")), "the old keys are gone"
    assert directory.migrate_legacy_layout() == 0
    assert [c.id for c in directory.search()] == sorted([ADA.id, GRACE.id])


def test_migration_keeps_what_changed_in_the_shards_since(directory, redis_client):
    directory.put(Customer(ADA.id, NEW_PHONE, "Ada, updated"))
    redis_client.hset(
        keys.legacy_customer(ADA.id),
        mapping={"id": ADA.id, "phone": ADA.phone, "name": ADA.name, "sms": "1"},
    )
    redis_client.hset(keys.legacy_customer_phones(), ADA.phone, ADA.id)
    assert directory.migrate_legacy_layout() == 0
    assert directory.get(ADA.id).name == "Ada, updated"
    assert directory.find_by_phone(ADA.phone) is None
