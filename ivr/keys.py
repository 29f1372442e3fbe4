"""Every Redis key name, built in one place (rq's keys.py pattern).

Keys carry a hash tag `{…}`: every key one Lua script touches shares its tag, hence its Redis
Cluster slot, and every script is given all of them in KEYS (none is built inside a script).
Verifications live in their number's bucket (see BUCKETS); a sid carries its bucket and its
number's id, so a script reached by sid or by number is given every key it needs. Features are
spread over slots (buckets, shards, per-item tags), so no single master carries a whole one.
"""

from __future__ import annotations

import hashlib
import re

NAMESPACE = "ivr"


# -- verifications: one bucket slot per number -------------------------------------------------
# A number's bucket (CodeSecrets.bucket: 2 hex digits from a keyed hash of the number, so key
# names never let anyone enumerate numbers) is the hash tag of every key of its verifications,
# and of the outbox and expiry list of that bucket: one script can end a verification, free
# its pointer and queue the event that announces it, atomically, in one slot. 256 buckets
# spread the numbers over the cluster's masters; the outbox and sweeps visit each bucket.
BUCKETS = tuple(f"{index:02x}" for index in range(256))


def _bucket(bucket: str) -> str:
    return f"{NAMESPACE}:{{v{bucket}}}:"


def pending_verification(bucket: str, number_id: str, scope_tag: str) -> str:
    """Hash: the pending verification of a number in one scope (see CodeSecrets.scope_tag),
    its code's HMAC and sealed copy included: one key per pending verification. When it ends
    it is renamed to `verification(bucket, sid)`, its code gone."""
    return f"{_bucket(bucket)}pv:{number_id}:{scope_tag}"


def verification(bucket: str, sid: str) -> str:
    """Hash: a verification that ended (approved, expired, canceled…), kept for the retention
    period; the same fields as when it was pending, but no code (see VerificationStore)."""
    return f"{_bucket(bucket)}ve:{sid}"


def sends(bucket: str, generation: int) -> str:
    """Hash: number id -> its sends in one window-long generation of time (base-36 ms,
    comma-separated), for the per-number send limit; the limit reads this generation and the
    one before, and each expires after two windows."""
    return f"{_bucket(bucket)}sends:{generation}"


def check_failures(bucket: str, number_id: str) -> str:
    """Sorted set: times of wrong codes for a number, the failure budget across verifications;
    exists only while it holds some."""
    return f"{_bucket(bucket)}f:{number_id}"


def seen_call(bucket: str, call_sid: str) -> str:
    """String: a CallSid our missed-call webhook already took (in the caller's bucket); kept
    long after, so a replayed request never approves anything."""
    return f"{_bucket(bucket)}call:{call_sid}"


def sends_in_flight(bucket: str) -> str:
    """Sorted set: "<sid>:<attempt>" -> when its send was asked (ms), until the carrier's
    answer settles it; one left here long after (a worker died mid-send) is failed by the
    reconciliation, so no verification stays pending with nothing sent."""
    return f"{_bucket(bucket)}in-flight"


def idempotency(bucket: str, digest: str) -> str:
    """String: the first answer to a request sent with an Idempotency-Key (keyed by a hash of
    the client and the key), written by the script that acted; kept 24 hours."""
    return f"{_bucket(bucket)}idem:{digest}"


def idempotency_index(digest: str) -> str:
    """String: "fingerprint|bucket" of an Idempotency-Key's first request, set before it acts,
    so the same key sent with other parameters (another number, another bucket) is refused;
    spread over 256 slots by the digest, kept 24 hours."""
    return f"{NAMESPACE}:{{idem:{digest[:2]}}}:{digest}"


def expiries(bucket: str) -> str:
    """Sorted set: sid -> expiry (ms) of the bucket's pending verifications, for the sweep that
    announces verification.expired when nobody checks (kept only while events are on)."""
    return f"{_bucket(bucket)}expiries"


def events_due(shard: str) -> str:
    """Sorted set: event id -> when it is next due for delivery (ms), one outbox per shard.
    A shard is a verification bucket ("v3a": the bucket's slot) or "events" (the outbox of
    releases before buckets, still drained)."""
    return (
        f"{NAMESPACE}:{{{shard}}}:due" if shard == "events" else f"{NAMESPACE}:{{{shard}}}:events"
    )


def event(shard: str, event_id: str) -> str:
    """Hash: one event waiting for delivery (type, body or the snapshot it is made from,
    attempts so far)."""
    return f"{NAMESPACE}:{{{shard}}}:event:{event_id}"


def events_dead(shard: str) -> str:
    """Sorted set: event id -> when delivery was given up (the app never took it); trimmed."""
    return (
        f"{NAMESPACE}:{{{shard}}}:dead"
        if shard == "events"
        else f"{NAMESPACE}:{{{shard}}}:events-dead"
    )


def events_hot() -> str:
    """Set: shards that were just given an event, so the dispatcher looks there first (a hint:
    every shard is also visited every few seconds, so a lost hint only delays)."""
    return f"{NAMESPACE}:{{events}}:hot"


def send_counter(scope: str, value: str) -> str:
    """Hash: sends per sub-window (its start, s -> count) for a prefix or an API token: the
    sliding-window counter of the fraud limits, a few fields whatever the traffic."""
    return f"{NAMESPACE}:{{limit:{scope}:{value}}}:sends"


def send_window(scope: str, value: str) -> str:
    """Sorted set: exact times of attempts for one scope (the console's sign-in limit)."""
    return f"{NAMESPACE}:{{limits}}:sends:{scope}:{value}"


# -- API tokens (see ivr.tokens): records sharded by the token's HMAC, names by the name --------
# A token and its name live in different slots; ivr.claims orders the steps (name first).

API_TOKEN_SHARDS = 8


def stable_shard(value: str, shards: int) -> int:
    """A shard for `value` the same on every host and release (SHA-256, not Python's hash())."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:4], "big") % shards


def api_token_shard(digest: str) -> int:
    """The shard of a token's record, from its HMAC (already uniform: its first hex digits)."""
    return int(digest[:8], 16) % API_TOKEN_SHARDS


def api_tokens(shard: int) -> str:
    """Hash: HMAC of each CLI-issued API token in this shard -> its JSON record (name,
    created_at, the name's claim). Bounded by the names given out, each by an operator."""
    return f"{NAMESPACE}:{{api-tokens:{shard}}}:tokens"


def api_token_names(shard: int) -> str:
    """Hash: token name -> its claim "<HMAC>|<ms>" (ivr.claims), so names are unique and
    revoking finds the token. Shard from `api_token_name_shard`."""
    return f"{NAMESPACE}:{{api-token-names:{shard}}}:names"


def api_token_name_shard(name: str) -> int:
    return stable_shard(name, API_TOKEN_SHARDS)


def legacy_api_tokens() -> str:
    """Hash of every token in one slot, before the tokens were sharded (read by the migration)."""
    return f"{NAMESPACE}:{{api-tokens}}:tokens"


def legacy_api_token_names() -> str:
    """Hash name -> HMAC in one slot, before sharding (deleted by the migration)."""
    return f"{NAMESPACE}:{{api-tokens}}:names"


def simulator_outbox() -> str:
    """List: what the simulated carrier sent, newest first, bodies sealed."""
    return f"{NAMESPACE}:{{simulator}}:outbox"


def call_state(call_sid: str) -> str:
    """Hash: a call's place in its IVR flow (step, state JSON); expires after the call."""
    return f"{NAMESPACE}:{{call:{call_sid}}}:flow-state"


def call_journey(call_sid: str) -> str:
    """List: a call's turns as JSON (nodes, masked keys, prompts, side effects); expires with
    its state, in the same slot (one script saves both)."""
    return f"{NAMESPACE}:{{call:{call_sid}}}:journey"


def recent_calls() -> str:
    """Sorted set: CallSid -> when it started (ms), the newest calls, capped."""
    return f"{NAMESPACE}:{{calls}}:recent"


# -- the customer directory (see ivr.customers): sharded records, a phone index sharded by phone --
# A customer's record and its phone's index entry live in different slots; ivr.claims orders
# the steps (claim the phone, write the record, release the old phone).

CUSTOMER_SHARDS = 16


def customer_shard(customer_id: str) -> int:
    return stable_shard(customer_id, CUSTOMER_SHARDS)


def customer(customer_id: str) -> str:
    """Hash: one customer on file (id, phone, name, sms, locale, claim: the phone's claim)."""
    return f"{NAMESPACE}:{{customers:{customer_shard(customer_id)}}}:customer:{customer_id}"


def customer_ids(shard: int) -> str:
    """Set: the ids of the customers in this shard, kept with their records by one script (the
    directory's listing reads every shard)."""
    return f"{NAMESPACE}:{{customers:{shard}}}:ids"


def customer_phones(e164: str) -> str:
    """Hash: phone (E.164) -> "<customer id>|<ms>", the claim of caller-ID identification's
    index (ivr.claims), in the shard of that phone."""
    return customer_phone_index(stable_shard(e164, CUSTOMER_SHARDS))


def customer_phone_index(shard: int) -> str:
    return f"{NAMESPACE}:{{customer-phones:{shard}}}:phones"


def legacy_customer(customer_id: str) -> str:
    """Hash: a customer from before sharding, all in the `{customers}` slot (migration only)."""
    return f"{NAMESPACE}:{{customers}}:customer:{customer_id}"


def legacy_customer_phones() -> str:
    """Hash phone -> id from before sharding (read, then deleted, by the migration)."""
    return f"{NAMESPACE}:{{customers}}:phones"


MISSED_CALL_SHARDS = 16


def missed_call_outcomes(shard: int) -> str:
    """Hash: outcome of calls to our missed-call numbers (approved, nothing_pending…) -> count,
    in one of MISSED_CALL_SHARDS counters (each call counts in a random one; a reading sums
    them): a flood of calls is spread over the masters."""
    return f"{NAMESPACE}:{{missed-calls:{shard}}}:outcomes"


def legacy_missed_call_outcomes() -> str:
    """Hash: the single counter of releases before MISSED_CALL_SHARDS; still read, never written."""
    return f"{NAMESPACE}:{{stats}}:missed-calls"


# -- published documents (flows, prompt catalogs): see ivr.flows.versions ----------------------
# One tag per kind ({flows}, {prompts}), deliberately not sharded: a publish changes version,
# live pointer, generation and draft in one atomic script, so they share one slot. A library is
# kilobytes to a few megabytes and read through a worker's cache, so one slot per kind is cheap.


def documents_generation(kind: str) -> str:
    """String: bumped on every publish of that kind; workers poll it to know when to reload."""
    return f"{NAMESPACE}:{{{kind}}}:generation"


def documents_live(kind: str) -> str:
    """Hash: document name -> its live version number."""
    return f"{NAMESPACE}:{{{kind}}}:live"


def documents_latest(kind: str) -> str:
    """Hash: document name -> the highest version number given out."""
    return f"{NAMESPACE}:{{{kind}}}:latest"


def document_versions(kind: str, name: str) -> str:
    """Hash: version number -> JSON (text, author, at, comment, source, digest); capped."""
    return f"{NAMESPACE}:{{{kind}}}:versions:{name}"


def documents_file_digests(kind: str) -> str:
    """Hash: document name -> sha256 of the file text last imported (files import once)."""
    return f"{NAMESPACE}:{{{kind}}}:file-digests"


def documents_drafts(kind: str) -> str:
    """Hash: document name -> JSON draft (text, author, updated_at, base version)."""
    return f"{NAMESPACE}:{{{kind}}}:drafts"


def document_trial(kind: str, text_digest: str) -> str:
    """String: a draft frozen for a simulated call; expires after a few hours."""
    return f"{NAMESPACE}:{{{kind}}}:trial:{text_digest}"


def document_trials(kind: str) -> str:
    """Sorted set: text digest -> when its trial expires (ms), so what trials name can be
    read without a SCAN; trimmed on each trial, and expiring with the last one."""
    return f"{NAMESPACE}:{{{kind}}}:trials"


# -- the console: users, sessions, audit (see ivr.users) ----------------------------------------


def console_user(name: str) -> str:
    """Hash: a console user (name, role, Argon2id hash, times)."""
    return f"{NAMESPACE}:{{user:{name}}}:user"


def console_user_sessions(name: str) -> str:
    """Set: the key names of a user's sessions, so every one can be ended at once."""
    return f"{NAMESPACE}:{{user:{name}}}:sessions"


def console_session(name: str, secret_digest: str) -> str:
    """Hash: one session (user, CSRF token, times); expires when idle. Named by the SHA-256 of
    the cookie's secret, never the secret."""
    return f"{NAMESPACE}:{{user:{name}}}:session:{secret_digest}"


def console_user_names() -> str:
    """Set: every console user's name."""
    return f"{NAMESPACE}:{{users}}:names"


def audit_log() -> str:
    """List: JSON audit entries, newest first, capped."""
    return f"{NAMESPACE}:{{audit}}:log"


def simulator_call(call_sid: str) -> str:
    """String: a console simulator's call in progress (who placed it, the question it waits
    on), JSON; expires after a couple of hours."""
    return f"{NAMESPACE}:{{sim:{call_sid}}}:call"


# -- verification statistics (see ivr.verification.stats): one slot per time bucket ----------


def stats_minute(minute: int) -> str:
    """Hash: counters of one minute (started|call|US → n…); kept 25 hours."""
    return f"{NAMESPACE}:{{stats:m:{minute}}}:verifications"


def stats_hour(hour: int) -> str:
    """Hash: counters of one hour; kept 8 days."""
    return f"{NAMESPACE}:{{stats:h:{hour}}}:verifications"


def recent_verifications() -> str:
    """Sorted set: verification sid → when it started (ms), capped, for the console's table."""
    return f"{NAMESPACE}:{{recent}}:verifications"


# -- the console's user management (see ivr.users) ---------------------------------------------


def console_users_lock() -> str:
    """String: a short lock (redis-py's Lock) held while a user is created, deleted or changes
    role, so the last-admin rule is checked and kept across hosts; beside the names set."""
    return f"{NAMESPACE}:{{users}}:lock"


# -- recorded prompts uploaded in the console (see ivr.recordings) ----------------------------


def prompt_recording(digest: str) -> str:
    """Hash: one uploaded recording by its content's SHA-256 (audio as base64, type, length,
    who uploaded it, when first and last); swept when no catalog draft, kept version or trial
    names it, an hour after its last upload (ivr.recordings). Its own slot: recordings are
    large and are read alone."""
    return f"{NAMESPACE}:{{recording:{digest}}}:audio"


def prompt_recordings_match() -> str:
    """A SCAN pattern for every recording's hash (braces are not special in Redis' globs)."""
    return prompt_recording("*")


def prompt_recording_digest(key: str) -> str | None:
    """The digest a recording's key names; None for any other key."""
    found = re.fullmatch(rf"{NAMESPACE}:\{{recording:([0-9a-f]{{64}})\}}:audio", key)
    return found.group(1) if found else None


# The sweep and the cap of recordings: one slot of their own ({recordings}), apart from the
# recordings'. An upload is counted here first, then stored in its own slot; the sweep deletes
# a recording first, then uncounts it (see ivr.recordings for why that order is crash-safe).


def recordings_index() -> str:
    """Sorted set: recording digest -> when it was last uploaded (ms), for the sweep that
    deletes those nothing has named for a while; one member per stored recording."""
    return f"{NAMESPACE}:{{recordings}}:index"


def recordings_sizes() -> str:
    """Hash: recording digest -> its audio's bytes, so the sweep knows what it frees; one field
    per stored recording, written with the index."""
    return f"{NAMESPACE}:{{recordings}}:sizes"


def recordings_total() -> str:
    """String: the bytes of audio of every recording counted in the index, against
    RECORDINGS_MAX_MB (the sum of `recordings_sizes`, kept by the same scripts)."""
    return f"{NAMESPACE}:{{recordings}}:total"


def recordings_sweep() -> str:
    """String: held while one host's sweep of recordings is due to run, so every worker on
    every host does not sweep at once; expires after the sweep interval."""
    return f"{NAMESPACE}:{{recordings}}:sweep"


# -- Verify Services (ivr.verification.services) ------------------------------------------------
# A handful per deployment, read far more than written: one slot holds them all, so creating
# one (its record and its place in the list) is one script.


def verify_service(sid: str) -> str:
    """String: a Verify Service's settings (JSON), by its VA sid."""
    return f"{NAMESPACE}:{{services}}:service:{sid}"


def verify_services() -> str:
    """Sorted set: every stored Service's sid by creation time (ms), the order lists page in;
    at most MAX_SERVICES."""
    return f"{NAMESPACE}:{{services}}:index"
