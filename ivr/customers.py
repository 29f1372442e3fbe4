"""The customer directory: who is on file, with which phone, so the IVR can identify a caller.

No Flask here. Customers live in Redis, one hash each, plus a phone → id index that caller-ID
identification reads; both change together inside one Lua script, so the index never points at a
customer who moved to another phone or was deleted. A phone belongs to at most one customer: a
second customer claiming it is refused (`PhoneTaken`), since caller-ID identification must find
exactly one person. An id is an account number a caller can type on a keypad.

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

import redis
import requests

from ivr import keys, phone
from ivr.prompts import LOCALE_PATTERN
from ivr.store import hash_from_flat

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

# Store a customer and point the phone index at it; a phone held by another customer is refused.
# An index entry whose customer hash is gone (written by hand, say) does not block the phone.
# KEYS[1] the customer's hash  KEYS[2] phone index (hash phone → id)
# ARGV[1] customer key prefix (same {customers} tag)  ARGV[2] id  ARGV[3] phone (E.164)
# ARGV[4] name  ARGV[5] sms "1"/"0"  ARGV[6] locale ("" for none)
# Returns {"created" | "replaced", ""}, or {"phone_taken", id of the customer holding the phone}.
PUT_CUSTOMER = """
local holder = redis.call('HGET', KEYS[2], ARGV[3])
if holder and holder ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. holder) == 1 then
  return {'phone_taken', holder}
end
local old_phone = redis.call('HGET', KEYS[1], 'phone')
if old_phone and old_phone ~= ARGV[3] and redis.call('HGET', KEYS[2], old_phone) == ARGV[2] then
  redis.call('HDEL', KEYS[2], old_phone)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'phone', ARGV[3], 'name', ARGV[4], 'sms', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'locale', ARGV[6]) end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
return {old_phone and 'replaced' or 'created', ''}
"""

# Remove a customer and its phone's index entry (if the entry is still theirs).
# KEYS[1] the customer's hash  KEYS[2] phone index
# ARGV[1] id
# Returns 1 when the customer existed, else 0.
DELETE_CUSTOMER = """
local old_phone = redis.call('HGET', KEYS[1], 'phone')
if not old_phone then return 0 end
if redis.call('HGET', KEYS[2], old_phone) == ARGV[1] then redis.call('HDEL', KEYS[2], old_phone) end
redis.call('DEL', KEYS[1])
return 1
"""

# The customer holding a phone, in one round trip (the identify node runs inside a webhook).
# KEYS[1] phone index
# ARGV[1] phone (E.164)  ARGV[2] customer key prefix (same {customers} tag)
# Returns the customer hash as HGETALL pairs, or an empty list.
FIND_BY_PHONE = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[2] .. id)
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
    """Customers on file in Redis, with the phone → id index kept right by Lua scripts."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._put = client.register_script(PUT_CUSTOMER)
        self._delete = client.register_script(DELETE_CUSTOMER)
        self._find = client.register_script(FIND_BY_PHONE)

    def _put_args(self, customer: Customer) -> dict[str, list[Any]]:
        return {
            "keys": [keys.customer(customer.id), keys.customer_phones()],
            "args": [
                keys.customer_prefix(),
                customer.id,
                customer.phone,
                customer.name,
                "1" if customer.sms else "0",
                customer.locale or "",
            ],
        }

    def put(self, customer: Customer) -> bool:
        """Create or replace a customer; True when created. Raises PhoneTaken."""
        outcome, holder = self._put(**self._put_args(customer))
        if outcome == "phone_taken":
            raise PhoneTaken(customer.id, holder)
        return outcome == "created"

    def get(self, customer_id: str) -> Customer | None:
        """The customer with this id (None for an id that is not an account number)."""
        if not is_account_number(customer_id):
            return None
        return _from_record(self.redis.hgetall(keys.customer(customer_id)))

    def delete(self, customer_id: str) -> bool:
        """Remove a customer and its phone from the index; False when there was none."""
        if not is_account_number(customer_id):
            return False
        removed = self._delete(
            keys=[keys.customer(customer_id), keys.customer_phones()], args=[customer_id]
        )
        return bool(removed)

    def find_by_phone(self, e164: str) -> Customer | None:
        """The customer whose phone on file is `e164` (caller-ID identification)."""
        flat = self._find(keys=[keys.customer_phones()], args=[e164, keys.customer_prefix()])
        return _from_record(hash_from_flat(flat)) if flat else None

    def search(self, query: str = "", limit: int = 100) -> list[Customer]:
        """Customers whose account number, phone or name contains `query` (all, up to `limit`,
        when it is empty), by account number. Reads the phone index: fine for a directory of
        tens of thousands; a bigger one belongs in the CRM (CUSTOMER_LOOKUP_URL)."""
        needle = query.strip().lower()
        ids = sorted(set(self.redis.hvals(keys.customer_phones())))
        found: list[Customer] = []
        for start in range(0, len(ids), 500):
            pipe = self.redis.pipeline(transaction=False)
            for customer_id in ids[start : start + 500]:
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
        pipe = self.redis.pipeline(transaction=False)
        for _, customer in rows:
            pipe.hget(keys.customer_phones(), customer.phone)
            pipe.hget(keys.customer(customer.id), "phone")
        answers = pipe.execute()
        holders = dict(zip((c.phone for _, c in rows), answers[::2], strict=True))
        existing = {c.id for (_, c), old in zip(rows, answers[1::2], strict=True) if old}
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
        ordered = _freeing_order([c for _, c in rows], waits_for)
        for start in range(0, len(ordered), _PIPELINE_CHUNK):
            chunk = ordered[start : start + _PIPELINE_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for customer in chunk:
                self._put(**self._put_args(customer), client=pipe)
            for customer, (outcome, holder) in zip(chunk, pipe.execute(), strict=True):
                if outcome == "phone_taken":
                    detail = PhoneTaken(customer.id, holder).detail
                    result.errors.append((line_of[customer.id], detail))
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


def _freeing_order(customers: list[Customer], waits_for: dict[str, str]) -> list[Customer]:
    """The customers ordered so that one giving up a phone is written before the one taking it
    (each row waits for at most one other, and _swaps ruled out circles)."""
    by_id = {customer.id: customer for customer in customers}
    ordered: list[Customer] = []
    placed: set[str] = set()
    for customer in customers:
        chain = [customer.id]
        while chain[-1] in waits_for and waits_for[chain[-1]] not in placed:
            chain.append(waits_for[chain[-1]])
        for customer_id in reversed(chain):
            if customer_id not in placed:
                placed.add(customer_id)
                ordered.append(by_id[customer_id])
    return ordered


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

    def by_phone(self, e164: str) -> Customer | None:
        """The customer whose phone on file is `e164` (the caller ID, already E.164)."""
        found = self.directory.find_by_phone(e164)
        if found is None and self.crm is not None:
            found = self.crm.by_phone(e164)
        return found

    def by_account(self, digits: str) -> Customer | None:
        """The customer with the account number a caller typed; None for malformed digits."""
        if not is_account_number(digits):
            return None
        found = self.directory.get(digits)
        if found is None and self.crm is not None:
            found = self.crm.by_account(digits)
        return found
