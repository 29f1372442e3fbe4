"""The customer directory: who is on file, with which phone, so the IVR can identify a caller.

No Flask here. Customers live in Redis, one hash each, spread over shards (slots) by id, plus a
phone → id index, sharded by phone, that caller-ID identification reads. A record and its phone's
entry are in different slots, so they change in order (ivr.claims: claim the phone, write the
record, release the old phone) and an entry is believed only when the record it names holds
that phone: a crash between steps leaves at worst a disbelieved claim, never a wrong match. A
phone belongs to at most one customer: a second customer claiming it is refused (`PhoneTaken`),
since caller-ID identification must find exactly one person. An id is an account number a
caller can type on a keypad.

When the directory has no match, an optional CRM (`CUSTOMER_LOOKUP_URL`) is asked over a signed
HTTP request; whatever goes wrong there is logged and treated as "not found", never raised into a
call.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

import requests

from ivr import claims, keys, phone
from ivr.prompts import LOCALE_PATTERN
from ivr.store import RedisClient

log = logging.getLogger(__name__)

# Account numbers: digits only, so a caller can type one at the identify node's keypad prompt.
ACCOUNT_PATTERN = re.compile(r"^[0-9]{4,16}$")
MAX_NAME_LENGTH = 100
# What a CSV's `sms` column (or a form-encoded body) may say; empty means the default, yes.
SMS_WORDS = {
    "true": True,
    "yes": True,
    "1": True,
    "": True,
    "false": False,
    "no": False,
    "0": False,
}
CSV_COLUMNS = ("id", "phone", "name", "sms", "locale")
CSV_REQUIRED = ("id", "phone", "name", "sms")
# A CRM answer larger than this is not a customer record; reading stops there.
MAX_CRM_ANSWER_BYTES = 64 * 1024
_PIPELINE_CHUNK = 500  # scripts per round trip when importing

ResolveLocale = Callable[[str], str]


class InvalidCustomer(ValueError):
    """A customer field is missing or wrong; `field` names it, `reason` is machine-readable."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


class PhoneTaken(Exception):
    """The phone is on file for another customer; `holder` is that customer's id."""

    def __init__(self, customer_id: str, holder: str):
        self.customer_id, self.holder = customer_id, holder
        self.detail = f"this phone is already on file for customer {holder}"
        super().__init__(self.detail)


@dataclass(frozen=True)
class Customer:
    """One customer on file. `sms` False means codes go by voice call (e.g. a landline)."""

    id: str
    phone: str  # E.164
    name: str
    sms: bool = True
    locale: str | None = None  # preferred prompts, e.g. "es-ES"; None: chosen per call

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phone": self.phone,
            "name": self.name,
            "sms": self.sms,
            "locale": self.locale,
        }


def is_account_number(value: object) -> TypeGuard[str]:
    """True when `value` has the shape of a customer id (4-16 digits)."""
    return isinstance(value, str) and ACCOUNT_PATTERN.fullmatch(value) is not None


def valid_account_number(value: object) -> str:
    """`value` if it is an account number (4-16 digits), else InvalidCustomer for field "id"."""
    if not is_account_number(value):
        raise InvalidCustomer(
            "id", "invalid_id", "a customer id is an account number of 4 to 16 digits"
        )
    return value


def new_customer(
    customer_id: object,
    *,
    phone_number: object,
    name: object,
    sms: object = True,
    locale: object = None,
    country: object = None,
    resolve_locale: ResolveLocale | None = None,
) -> Customer:
    """Validate untrusted fields (API body, CSV row, CRM answer) into a Customer.

    `country` is an ISO hint for national-format numbers; `resolve_locale` (the prompt
    catalogs') refuses a locale no catalog speaks. Raises InvalidCustomer naming the field.
    """
    customer_id = valid_account_number(customer_id)
    if phone_number in (None, ""):
        raise InvalidCustomer("phone", "missing_field", "'phone' is required")
    try:
        e164 = phone.parse(phone_number, country).e164
    except phone.NumberRefused as exc:
        field_name = "country" if exc.reason == "invalid_country" else "phone"
        raise InvalidCustomer(field_name, exc.reason, exc.detail) from None
    return Customer(
        id=customer_id,
        phone=e164,
        name=_valid_name(name),
        sms=_valid_sms(sms),
        locale=_valid_locale(locale, resolve_locale),
    )


def parse_sms_flag(text: str) -> bool:
    """A text flag (true/false, yes/no, 1/0; empty = true) as a bool; ValueError otherwise."""
    try:
        return SMS_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"sms must be true/false, yes/no or 1/0, got {text!r}") from None


def _valid_name(name: object) -> str:
    if name is None or name == "":
        raise InvalidCustomer("name", "missing_field", "'name' is required")
    if not isinstance(name, str):
        raise InvalidCustomer("name", "invalid_name", "name must be a string")
    # The length as sent (what the API's schema bounds), then the spaces tidied.
    if len(name) > MAX_NAME_LENGTH or not (name := " ".join(name.split())):
        raise InvalidCustomer(
            "name", "invalid_name", f"name must be 1 to {MAX_NAME_LENGTH} characters"
        )
    # Names reach agents' screens and TaskRouter attributes: no control or format characters.
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
        raise InvalidCustomer("name", "invalid_name", "name must not hold control characters")
    return name


def _valid_sms(sms: object) -> bool:
    if not isinstance(sms, bool):
        raise InvalidCustomer("sms", "invalid_sms", "sms must be true or false")
    return sms


def _valid_locale(locale: object, resolve_locale: ResolveLocale | None) -> str | None:
    """The locale in canonical shape (es-mx → es-MX), kept as asked: a catalog added later for
    the exact region is then used. Refused when no catalog speaks its language."""
    if locale is None or locale == "":
        return None
    match = LOCALE_PATTERN.fullmatch(locale) if isinstance(locale, str) else None
    if match is None:
        raise InvalidCustomer("locale", "unknown_locale", "locale must look like 'es-ES'")
    language, region = match.group(1).lower(), match.group(2)
    canonical = f"{language}-{region.upper()}" if region else language
    if resolve_locale is not None:
        try:
            resolve_locale(canonical)
        except ValueError as exc:  # prompts.UnknownLocale
            raise InvalidCustomer("locale", "unknown_locale", str(exc)) from None
    return canonical


# -- Redis ---------------------------------------------------------------------------------------

# Write a customer's record (step 2 of a put, see ivr.claims) and list its id in its shard; the
# phone was claimed first, and that claim's entry is kept so the old phone can be released.
# KEYS[1] the customer's hash  KEYS[2] its shard's id set (same {customers:<shard>} tag)
# ARGV[1] id  ARGV[2] phone (E.164)  ARGV[3] name  ARGV[4] sms "1"/"0"  ARGV[5] locale ("" none)
# ARGV[6] the phone's claim entry ("<id>|<ms>")
# Returns {old phone, old claim entry}: {"", ""} when the customer is new.
WRITE_CUSTOMER = """
local old = redis.call('HMGET', KEYS[1], 'phone', 'claim')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'phone', ARGV[2], 'name', ARGV[3], 'sms', ARGV[4],
           'claim', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'locale', ARGV[5]) end
redis.call('SADD', KEYS[2], ARGV[1])
return {old[1] or '', old[2] or ''}
"""

# Remove a customer's record and its id from its shard (step 1 of a delete; the phone's claim is
# released after, and a claim whose record is gone is disbelieved meanwhile).
# KEYS[1] the customer's hash  KEYS[2] its shard's id set
# ARGV[1] id
# Returns {phone, claim entry} of the removed customer, or {} when there was none.
DELETE_CUSTOMER = """
local old = redis.call('HMGET', KEYS[1], 'phone', 'claim')
redis.call('SREM', KEYS[2], ARGV[1])
if not old[1] then return {} end
redis.call('DEL', KEYS[1])
return {old[1], old[2] or ''}
"""


def _from_record(record: Mapping[str, str]) -> Customer | None:
    if not record.get("id") or not record.get("phone"):
        return None
    return Customer(
        id=record["id"],
        phone=record["phone"],
        name=record.get("name", ""),
        sms=record.get("sms", "1") == "1",
        locale=record.get("locale") or None,
    )


@dataclass
class ImportResult:
    """What an import did (or, dry, would do); `errors` are (line, message), nothing written."""

    created: int = 0
    replaced: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


class CustomerDirectory:
    """Customers on file in Redis, sharded over slots, with a phone → id index sharded by
    phone. A record and its phone's entry are in different slots: every change follows
    ivr.claims (claim the phone, write the record, release the old phone), and the index is
    believed only where the record agrees, so a crash between steps never lets two customers
    hold one phone nor identifies a caller wrongly."""

    def __init__(self, client: RedisClient, clock_ms: Callable[[], int] = claims.now_ms):
        self.redis = client
        self._clock = clock_ms
        self._write = client.register_script(WRITE_CUSTOMER)
        self._delete = client.register_script(DELETE_CUSTOMER)
        self._claim = client.register_script(claims.CLAIM)
        self._release = client.register_script(claims.RELEASE)

    # -- the steps of a put (public so that tests can stop between them) ----------------------

    def claim_phones(self, customers: list[Customer]) -> list[str | PhoneTaken]:
        """Step 1: claim each customer's phone; its claim entry, or PhoneTaken when the phone
        is another customer's (their record agrees, or their claim is in flight). A claim left
        by a crash (its record disagrees, older than the grace) is taken over."""
        now = self._clock()
        pipe = self.redis.pipeline(transaction=False)
        for customer in customers:
            claims.queue_script(
                pipe,
                self._claim,
                [keys.customer_phones(customer.phone)],
                [customer.phone, customer.id, now, ""],
            )
        outcomes: list[str | PhoneTaken] = []
        refused: list[tuple[int, claims.Claim]] = []
        for index, (won, entry) in enumerate(pipe.execute()):
            outcomes.append(entry)
            if not won:
                refused.append((index, claims.Claim.parse(entry)))
        if not refused:
            return outcomes
        phones = self._phones_of([held.owner for _, held in refused])
        pipe = self.redis.pipeline(transaction=False)
        retaken: list[int] = []
        for index, held in refused:
            customer = customers[index]
            if phones.get(held.owner) == customer.phone or held.in_flight(now):
                outcomes[index] = PhoneTaken(customer.id, held.owner)
                continue
            retaken.append(index)
            claims.queue_script(
                pipe,
                self._claim,
                [keys.customer_phones(customer.phone)],
                [customer.phone, customer.id, now, held.entry],
            )
        for index, (won, entry) in zip(retaken, pipe.execute(), strict=True):
            holder = claims.Claim.parse(entry).owner
            outcomes[index] = entry if won else PhoneTaken(customers[index].id, holder)
        return outcomes

    def write_records(self, claimed: list[tuple[Customer, str]]) -> list[tuple[str, str]]:
        """Step 2: write each customer's record with its phone's claim entry; for each, the
        (phone, claim entry) it held before ("", "" when new). ClaimLapsed, nothing written,
        when a claim is too old to trust."""
        now = self._clock()
        for _, entry in claimed:
            claims.check_not_lapsed(claims.Claim.parse(entry).claimed_at, now)
        pipe = self.redis.pipeline(transaction=False)
        for customer, entry in claimed:
            claims.queue_script(
                pipe,
                self._write,
                [keys.customer(customer.id), keys.customer_ids(keys.customer_shard(customer.id))],
                [
                    customer.id,
                    customer.phone,
                    customer.name,
                    "1" if customer.sms else "0",
                    customer.locale or "",
                    entry,
                ],
            )
        return [(old_phone, old_entry) for old_phone, old_entry in pipe.execute()]

    def release_phones(self, released: list[tuple[str, str]]) -> None:
        """Step 3: release each (phone, claim entry), unless the entry changed since."""
        if not released:
            return
        pipe = self.redis.pipeline(transaction=False)
        for phone_number, entry in released:
            claims.queue_script(
                pipe, self._release, [keys.customer_phones(phone_number)], [phone_number, entry]
            )
        pipe.execute()

    def _put_many(self, customers: list[Customer]) -> list[str | PhoneTaken]:
        """Put customers whose phones are distinct: "created", "replaced" or PhoneTaken each."""
        outcomes = self.claim_phones(customers)
        claimed = [
            (customer, entry)
            for customer, entry in zip(customers, outcomes, strict=True)
            if isinstance(entry, str)
        ]
        previous = self.write_records(claimed) if claimed else []
        self.release_phones(
            [
                (old_phone, old_entry)
                for (customer, _), (old_phone, old_entry) in zip(claimed, previous, strict=True)
                if old_phone and old_phone != customer.phone
            ]
        )
        written = iter(previous)
        return [
            outcome
            if isinstance(outcome, PhoneTaken)
            else ("replaced" if next(written)[0] else "created")
            for outcome in outcomes
        ]

    def _phones_of(self, customer_ids: Iterable[str]) -> dict[str, str | None]:
        """Each customer's phone on file (None for no such customer)."""
        ids = sorted(
            {customer_id for customer_id in customer_ids if is_account_number(customer_id)}
        )
        pipe = self.redis.pipeline(transaction=False)
        for customer_id in ids:
            pipe.hget(keys.customer(customer_id), "phone")
        return dict(zip(ids, pipe.execute(), strict=True)) if ids else {}

    # -- the directory --------------------------------------------------------------------------

    def put(self, customer: Customer) -> bool:
        """Create or replace a customer; True when created. Raises PhoneTaken."""
        [outcome] = self._put_many([customer])
        if isinstance(outcome, PhoneTaken):
            raise outcome
        return outcome == "created"

    def get(self, customer_id: str) -> Customer | None:
        """The customer with this id (None for an id that is not an account number)."""
        if not is_account_number(customer_id):
            return None
        return _from_record(self.redis.hgetall(keys.customer(customer_id)))

    def delete_record(self, customer_id: str) -> tuple[str, str] | None:
        """Step 1 of a delete: remove the record; its (phone, claim entry), None if none."""
        shard = keys.customer_ids(keys.customer_shard(customer_id))
        removed = self._delete(keys=[keys.customer(customer_id), shard], args=[customer_id])
        return (removed[0], removed[1]) if removed else None

    def delete(self, customer_id: str) -> bool:
        """Remove a customer, then release its phone; False when there was none."""
        if not is_account_number(customer_id):
            return False
        removed = self.delete_record(customer_id)
        if removed is None:
            return False
        self.release_phones([removed])
        return True

    def find_by_phone(self, e164: str) -> Customer | None:
        """The customer whose phone on file is `e164` (caller-ID identification): the index
        entry, believed only when the record it names holds that phone."""
        return self.find_by_entry(e164, self.redis.hget(*self.phone_entry(e164)))

    @staticmethod
    def phone_entry(e164: str) -> tuple[str, str]:
        """Where the phone index keeps `e164`'s entry (hash key, field), for a caller that
        reads it in a round trip of its own making."""
        return keys.customer_phones(e164), e164

    def find_by_entry(self, e164: str, entry: str | None) -> Customer | None:
        """`find_by_phone`, given the phone's index entry as read (None: no entry)."""
        if entry is None:
            return None
        owner = claims.Claim.parse(entry).owner
        if not is_account_number(owner):
            return None
        found = _from_record(self.redis.hgetall(keys.customer(owner)))
        return found if found is not None and found.phone == e164 else None

    def ids(self) -> list[str]:
        """Every customer's id, sorted (every shard's id set, in one pipelined round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(keys.CUSTOMER_SHARDS):
            pipe.smembers(keys.customer_ids(shard))
        return sorted(set().union(*pipe.execute()))

    def search(self, query: str = "", limit: int = 100) -> list[Customer]:
        """Customers whose account number, phone or name contains `query` (all, up to `limit`,
        when it is empty), by account number. Reads every shard: fine for a directory of
        tens of thousands; a bigger one belongs in the CRM (CUSTOMER_LOOKUP_URL)."""
        needle = query.strip().lower()
        ids = self.ids()
        found: list[Customer] = []
        for start in range(0, len(ids), _PIPELINE_CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for customer_id in ids[start : start + _PIPELINE_CHUNK]:
                pipe.hgetall(keys.customer(customer_id))
            for record in pipe.execute():
                customer = _from_record(record)
                if customer is None:
                    continue
                haystack = f"{customer.id} {customer.phone} {customer.name}".lower()
                if not needle or needle in haystack:
                    found.append(customer)
                    if len(found) >= limit:
                        return found
        return found

    def holders(self, phones: Iterable[str]) -> dict[str, str | None]:
        """Who holds each phone: the customer whose record agrees with the index entry, or
        whose claim is in flight (it may be theirs in a moment); None when free."""
        phones = list(dict.fromkeys(phones))
        pipe = self.redis.pipeline(transaction=False)
        for phone_number in phones:
            pipe.hget(keys.customer_phones(phone_number), phone_number)
        entries = {
            phone_number: claims.Claim.parse(entry)
            for phone_number, entry in zip(phones, pipe.execute(), strict=True)
            if entry is not None
        }
        on_file = self._phones_of(held.owner for held in entries.values())
        now = self._clock()
        found: dict[str, str | None] = dict.fromkeys(phones)
        for phone_number, held in entries.items():
            if on_file.get(held.owner) == phone_number or held.in_flight(now):
                found[phone_number] = held.owner
        return found

    def migrate_legacy_layout(self) -> int:
        """Move customers from the single-slot layout (before sharding) into the shards; how
        many moved. Idempotent: a customer already in the shards is kept as it is there, and
        the old keys go only once every customer was moved."""
        legacy_index = keys.legacy_customer_phones()
        old_ids = sorted(
            {claims.Claim.parse(entry).owner for entry in self.redis.hvals(legacy_index)}
        )
        old_ids = [customer_id for customer_id in old_ids if is_account_number(customer_id)]
        moved = left = 0
        for start in range(0, len(old_ids), _PIPELINE_CHUNK):
            chunk = old_ids[start : start + _PIPELINE_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for customer_id in chunk:
                pipe.hgetall(keys.legacy_customer(customer_id))
                pipe.exists(keys.customer(customer_id))
            answers = pipe.execute()
            waiting = [
                customer
                for record, present in zip(answers[::2], answers[1::2], strict=True)
                if not present and (customer := _from_record(record)) is not None
            ]
            kept: set[str] = set()
            for outcome, customer in zip(self._put_many(waiting), waiting, strict=True):
                if isinstance(outcome, PhoneTaken):  # taken since, in the shards: keep the old
                    log.warning("customers: %s not migrated: %s", customer.id, outcome.detail)
                    kept.add(customer.id)
                else:
                    moved += 1
            left += len(kept)
            pipe = self.redis.pipeline(transaction=False)
            for customer_id in chunk:
                if customer_id not in kept:
                    pipe.delete(keys.legacy_customer(customer_id))
            pipe.execute()
        if left:
            return moved
        self.redis.delete(legacy_index)
        return moved

    def import_csv(
        self,
        lines: Iterable[str],
        *,
        country: str | None = None,
        resolve_locale: ResolveLocale | None = None,
        dry_run: bool = False,
    ) -> ImportResult:
        """Import a CSV (see read_csv), all-or-nothing, reporting every bad row in one pass:
        its format, an id or phone twice in the file, a phone on file for a customer the file
        does not move elsewhere. Nothing is written if any row is bad."""
        read = read_csv(lines, country=country, resolve_locale=resolve_locale)
        return self.import_rows(
            read.rows, dry_run=dry_run, bad_rows=read.errors, bad_row_ids=read.bad_row_ids
        )

    def import_rows(
        self,
        rows: list[tuple[int, Customer]],
        *,
        dry_run: bool = False,
        bad_rows: Iterable[tuple[int, str]] = (),
        bad_row_ids: Mapping[str, int] | None = None,
    ) -> ImportResult:
        """Create or replace many customers (line, customer); all-or-nothing against bad rows.

        Every row is checked before anything is written: an id or phone twice in the rows, or a
        phone on file for a customer the rows do not move elsewhere. `bad_rows` (line, message)
        are a file's rows that did not even parse, reported with these; `bad_row_ids` are the
        ids they hold (id → line), which count for "twice". Rows are written in an order that
        frees a phone before another row takes it. Only a concurrent writer can still make a
        row fail once writing began (reported, the other rows stay written).
        """
        result = ImportResult(errors=list(bad_rows))
        duplicates = _duplicates(rows, bad_row_ids or {})
        result.errors += duplicates
        repeated = {line for line, _ in duplicates}
        rows = [(line, customer) for line, customer in rows if line not in repeated]
        # A customer a bad row is for is not "outside the file": once that row is right it
        # may free the phone another row takes, so it is not reported on that other row.
        by_id = {customer.id for _, customer in rows} | set(bad_row_ids or ())
        holders = self.holders(customer.phone for _, customer in rows)
        on_file = self._phones_of(customer.id for _, customer in rows)
        existing = {customer.id for _, customer in rows if on_file.get(customer.id)}
        waits_for: dict[str, str] = {}  # id → id of the row that must free its phone first
        for line, customer in rows:
            holder = holders[customer.phone]
            if holder is None or holder == customer.id:
                continue
            if holder not in by_id:
                result.errors.append((line, PhoneTaken(customer.id, holder).detail))
            else:
                waits_for[customer.id] = holder
        result.errors += _swaps(rows, waits_for)
        if result.errors:
            result.errors.sort()
            return result
        if dry_run:
            result.replaced = len(existing)
            result.created = len(rows) - result.replaced
            return result
        line_of = {customer.id: line for line, customer in rows}
        for wave in _freeing_waves([c for _, c in rows], waits_for):
            for start in range(0, len(wave), _PIPELINE_CHUNK):
                chunk = wave[start : start + _PIPELINE_CHUNK]
                for customer, outcome in zip(chunk, self._put_many(chunk), strict=True):
                    if isinstance(outcome, PhoneTaken):
                        result.errors.append((line_of[customer.id], outcome.detail))
                    elif outcome == "created":
                        result.created += 1
                    else:
                        result.replaced += 1
        return result


def _duplicates(
    rows: list[tuple[int, Customer]], bad_row_ids: Mapping[str, int]
) -> list[tuple[int, str]]:
    """Rows whose id or phone an earlier row has (or whose id an earlier bad row has)."""
    errors = []
    id_line: dict[str, int] = {}
    phone_line: dict[str, tuple[int, str]] = {}
    for line, customer in rows:
        first = min(id_line.get(customer.id, line), bad_row_ids.get(customer.id, line))
        if first < line:
            errors.append((line, f"id {customer.id} is also on line {first}"))
            continue
        id_line[customer.id] = line
        if customer.phone in phone_line:
            other_line, other_id = phone_line[customer.phone]
            errors.append(
                (line, f"phone is also on line {other_line} (customer {other_id}): one each")
            )
            continue
        phone_line[customer.phone] = (line, customer.id)
    return errors


def _swaps(rows: list[tuple[int, Customer]], waits_for: dict[str, str]) -> list[tuple[int, str]]:
    """Rows whose phones go round in a circle (A takes B's, B takes A's): no order frees one
    first, and writing them would leave a moment where two customers hold a phone."""
    errors = []
    for line, customer in rows:
        seen = {customer.id}
        current = waits_for.get(customer.id)
        while current is not None and current not in seen:
            seen.add(current)
            current = waits_for.get(current)
        if current == customer.id:
            errors.append(
                (
                    line,
                    "phones are exchanged between customers "
                    f"{', '.join(sorted(seen))}: import without one of them first",
                )
            )
    return errors


def _freeing_waves(customers: list[Customer], waits_for: dict[str, str]) -> list[list[Customer]]:
    """The customers in waves, each written whole before the next: one giving up a phone is in
    an earlier wave than the one taking it (each row waits for at most one other, and _swaps
    ruled out circles). Within a wave no row takes a phone another frees, so a wave's claims,
    records and releases can each go in one pipelined round trip."""
    depth: dict[str, int] = {}

    def depth_of(customer_id: str) -> int:
        if customer_id not in depth:
            holder = waits_for.get(customer_id)
            depth[customer_id] = 0 if holder is None else depth_of(holder) + 1
        return depth[customer_id]

    waves: list[list[Customer]] = []
    for customer in customers:
        level = depth_of(customer.id)
        while len(waves) <= level:
            waves.append([])
        waves[level].append(customer)
    return waves


class CsvRows(NamedTuple):
    """A customer CSV read: good rows and bad ones, each by the line where it starts."""

    rows: list[tuple[int, Customer]]  # (line, customer)
    errors: list[tuple[int, str]]  # (line, what is wrong)
    bad_row_ids: dict[str, int]  # the well-formed id of a bad row → its first line


def read_csv(
    lines: Iterable[str], *, country: str | None = None, resolve_locale: ResolveLocale | None = None
) -> CsvRows:
    """Customers from CSV text with the header `id,phone,name,sms[,locale]`; the line of each
    row is where the record starts in the file, so a person can find it."""
    reader = csv.reader(lines, strict=True)
    rows: list[tuple[int, Customer]] = []
    errors: list[tuple[int, str]] = []
    bad_ids: dict[str, int] = {}
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return CsvRows([], [(1, f"not a CSV header ({exc})")], {})
    columns = [name.strip().lower() for name in header or []]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    missing = [name for name in CSV_REQUIRED if name not in columns]
    if unknown or missing or len(set(columns)) != len(columns):
        header_error = f"the header must be {','.join(CSV_COLUMNS)} (locale is optional)"
        return CsvRows([], [(1, header_error)], {})
    line = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append((line, f"not valid CSV ({exc})"))
            break
        start, line = line, reader.line_num + 1
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if len(record) != len(columns):
            errors.append((start, f"expected {len(columns)} fields, found {len(record)}"))
            continue
        values = {name: value.strip() for name, value in zip(columns, record, strict=True)}
        try:
            customer = _customer_of(values, country, resolve_locale)
        except InvalidCustomer as exc:
            errors.append((start, f"{exc.field}: {exc.detail}"))
            if is_account_number(values["id"]):  # for the id checks of the other rows
                bad_ids.setdefault(values["id"], start)
            continue
        rows.append((start, customer))
    return CsvRows(rows, errors, bad_ids)


def _customer_of(
    values: Mapping[str, str], country: str | None, resolve_locale: ResolveLocale | None
) -> Customer:
    """One CSV row's customer, or InvalidCustomer naming the column at fault."""
    try:
        sms = parse_sms_flag(values["sms"])
    except ValueError as exc:
        raise InvalidCustomer("sms", "invalid_sms", str(exc)) from None
    return new_customer(
        values["id"],
        phone_number=values["phone"],
        name=values["name"],
        sms=sms,
        locale=values.get("locale") or None,
        country=country,
        resolve_locale=resolve_locale,
    )


# -- the CRM hook --------------------------------------------------------------------------------


def sign_lookup(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-IVR-Signature value: HMAC-SHA256 over "<timestamp>.<body>" (Stripe's scheme: the
    timestamp inside the MAC lets the CRM refuse replays of an old request)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


_CRM_THREADS = 8  # lookups in flight per worker process; more wait their turn
_DEADLINE_GRACE_SECONDS = 0.2


class CrmLookup:
    """Asks the team's CRM (CUSTOMER_LOOKUP_URL) for a customer the directory does not hold.

    A signed JSON POST with a timeout; 200 with a customer record is a match, 404 is none, and
    any failure is logged (numbers masked) and answered with None: a CRM outage must not break
    a call, which then goes on as "not identified".
    """

    def __init__(
        self,
        url: str,
        secret: str,
        timeout: float,
        resolve_locale: ResolveLocale | None = None,
    ):
        self.url = url
        self.timeout = timeout
        self._secret = secret.encode()
        self._resolve_locale = resolve_locale
        self._local = threading.local()  # a Session per thread: pooled, not shared across threads
        # Lookups run here so the caller's wait has one hard limit, whatever the CRM does
        # (requests' timeouts are per connect and per read: a trickling answer outlasts them).
        self._pool = ThreadPoolExecutor(max_workers=_CRM_THREADS, thread_name_prefix="crm")

    def by_phone(self, e164: str) -> Customer | None:
        """The customer whose phone is `e164`, per the CRM; its answer must be for that phone."""
        customer = self._ask({"phone": e164}, f"phone {phone.masked(e164)}")
        if customer is not None and customer.phone != e164:
            log.warning("customer lookup for %s answered another phone", phone.masked(e164))
            return None
        return customer

    def by_account(self, account: str) -> Customer | None:
        """The customer with this account number, per the CRM; its answer must carry that id."""
        described = f"account {_masked_account(account)}"
        customer = self._ask({"account": account}, described)
        if customer is not None and customer.id != account:
            log.warning("customer lookup for %s answered another account", described)
            return None
        return customer

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _ask(self, query: dict[str, str], described: str) -> Customer | None:
        """The CRM's answer within the timeout, or None (the late answer is dropped)."""
        future = self._pool.submit(self._exchange, query, described)
        try:
            return future.result(timeout=self.timeout + _DEADLINE_GRACE_SECONDS)
        except FutureTimeout:
            log.warning("customer lookup for %s: no answer within %s s", described, self.timeout)
            return None

    def _exchange(self, query: dict[str, str], described: str) -> Customer | None:
        body = json.dumps(query, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-IVR-Timestamp": timestamp,
            "X-IVR-Signature": sign_lookup(self._secret, timestamp, body),
        }
        # One deadline for the whole exchange: requests' timeout is per connect and per read,
        # so a CRM trickling bytes could otherwise hold the caller past Twilio's patience.
        deadline = time.monotonic() + self.timeout
        try:
            with self._session().post(
                self.url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    log.warning(
                        "customer lookup for %s: CRM answered %s", described, response.status_code
                    )
                    return None
                raw = _read_bounded(response, deadline)
        except requests.RequestException as exc:
            log.warning("customer lookup for %s failed: %s", described, type(exc).__name__)
            return None
        try:
            if len(raw) > MAX_CRM_ANSWER_BYTES:
                raise ValueError(f"answer over {MAX_CRM_ANSWER_BYTES} bytes")
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("answer is not a JSON object")
            return new_customer(
                _as_text(record.get("id")),
                phone_number=record.get("phone"),
                name=record.get("name"),
                sms=record.get("sms", True),
                locale=record.get("locale"),
                resolve_locale=self._resolve_locale,
            )
        except InvalidCustomer as exc:
            log.warning("customer lookup for %s: invalid %s in the answer", described, exc.field)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError…
            log.warning("customer lookup for %s: unusable answer (%s)", described, exc)
        return None


def _read_bounded(response: requests.Response, deadline: float) -> bytes:
    """At most MAX_CRM_ANSWER_BYTES + 1 of the body, read before `deadline` (monotonic), else
    requests.Timeout (iter_content turns a stalled or broken body into requests' own
    exceptions, which raw reads would not)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        if time.monotonic() > deadline:
            raise requests.Timeout("the CRM took longer than CUSTOMER_LOOKUP_TIMEOUT_SECONDS")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_CRM_ANSWER_BYTES:
            break
    return b"".join(chunks)


def _as_text(value: object) -> object:
    """CRMs often send account numbers as JSON numbers; 1234 means "1234" (not 1234.0)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _masked_account(account: str) -> str:
    """An account number fit for logs: its last four digits hidden, like a phone's."""
    return account[:-4] + "****" if len(account) > 6 else "****"


class CustomerFinder:
    """Who a caller is: the directory first, then the CRM hook when one is configured."""

    def __init__(self, directory: CustomerDirectory, crm: CrmLookup | None = None):
        self.directory = directory
        self.crm = crm

    def by_caller_id(self, caller: str) -> Customer | None:
        """The customer whose phone on file is the caller ID `caller`; None when it is withheld,
        a SIP address or not a number. The directory is asked with the string as Twilio sent
        it (E.164, as the directory stores phones): no parsing on the path of every call. The
        CRM, a request to someone else's system, is asked only for a valid number."""
        shaped = phone.e164_shaped(caller)
        if shaped is None:
            return None
        key, field = self.directory.phone_entry(shaped)
        return self.by_phone_entry(shaped, self.directory.redis.hget(key, field))

    def by_phone_entry(self, e164: str, entry: str | None) -> Customer | None:
        """`by_caller_id`, given the phone index's entry for `e164` as read (None: none)."""
        found = self.directory.find_by_entry(e164, entry)
        if found is None and self.crm is not None:
            number = phone.parse_caller_id(e164)
            found = self.crm.by_phone(number.e164) if number is not None else None
        return found

    def by_account(self, digits: str) -> Customer | None:
        """The customer with the account number a caller typed; None for malformed digits."""
        if not is_account_number(digits):
            return None
        found = self.directory.get(digits)
        if found is None and self.crm is not None:
            found = self.crm.by_account(digits)
        return found
