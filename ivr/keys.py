"""Every Redis key name, built in one place (rq's keys.py pattern).

Keys carry a hash tag `{…}` so that every key one Lua script touches lands in one Redis Cluster
slot. Per-number state is tagged with the number's routing tag (see `CodeSecrets.routing_tag`),
which is also embedded in the verification sid, so a script reached by sid or by number finds all
of that number's keys in one slot. Send limits share the `{limits}` tag: one script checks the
number, prefix and token windows together.
"""

from __future__ import annotations

import hashlib

NAMESPACE = "ivr"


def number_prefix(tag: str) -> str:
    """The common start of every key in a number's slot; scripts derive keys from it."""
    return f"{NAMESPACE}:{{{tag}}}:"


def verification(tag: str, sid: str) -> str:
    """Hash: one verification's public state (status, number, send attempts…)."""
    return f"{number_prefix(tag)}verification:{sid}"


def code(tag: str, sid: str) -> str:
    """Hash: the code's HMAC and its sealed copy; expires with the verification."""
    return f"{number_prefix(tag)}code:{sid}"


def pending(tag: str, e164: str, scope: str | None = None) -> str:
    """String: sid of the number's pending verification; expires with it. A `scope` (an IVR
    call) keeps a pointer of its own, so API clients and calls never re-send or adopt each
    other's verifications."""
    if scope:
        return f"{number_prefix(tag)}pending:{scope}:{e164}"
    return f"{number_prefix(tag)}pending:{e164}"


def seen_call(tag: str, call_sid: str) -> str:
    """String: a CallSid our missed-call webhook already took (in the caller's slot); kept long
    after, so a replayed request never approves anything."""
    return f"{number_prefix(tag)}call:{call_sid}"


def check_failures(tag: str, e164: str) -> str:
    """Sorted set: times of wrong codes for a number, the failure budget across verifications."""
    return f"{number_prefix(tag)}check-failures:{e164}"


def send_window(scope: str, value: str) -> str:
    """Sorted set: times of sends for one scope (number, prefix, token)."""
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


def events_due() -> str:
    """Sorted set: event id → when it is next due for delivery (ms), the events outbox."""
    return f"{NAMESPACE}:{{events}}:due"


def event(event_id: str) -> str:
    """Hash: one event waiting for delivery (type, body, attempts so far)."""
    return f"{NAMESPACE}:{{events}}:event:{event_id}"


def events_dead() -> str:
    """Sorted set: event id → when delivery was given up (the app never took it)."""
    return f"{NAMESPACE}:{{events}}:dead"


def missed_call_outcomes() -> str:
    """Hash: outcome of calls to our missed-call numbers (approved, nothing_pending…) → count."""
    return f"{NAMESPACE}:{{stats}}:missed-calls"


def expiries() -> str:
    """Sorted set: verification sid → its expiry (ms), for the sweep that announces
    verification.expired when nobody checks (kept only while EVENTS_WEBHOOK_URL is set)."""
    return f"{NAMESPACE}:{{events}}:expiries"


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
    who uploaded it); kept while any catalog version may name it. Its own slot: recordings are
    large and are read alone."""
    return f"{NAMESPACE}:{{recording:{digest}}}:audio"
