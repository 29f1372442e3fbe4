"""Published versions of flows (and prompt catalogs) in Redis: drafts, publish, history, rollback.

Why Redis and not the files: every worker on every host must serve a publish at once, and a
restart must lose nothing. The files in FLOWS_DIR / VOICE_PROMPTS_DIR stay the way to ship a
starting set and to deploy as files: a file whose text changed since it was last imported is
published as a new version (see `import_file`), so the newest change wins, whether it came from
the console or from a file.

A document's history is linear: a rollback publishes a copy of an older version as the newest,
so "who made the live version, and from what" is always the top of the history. Every change
bumps one generation counter, which each worker polls (one GET a second) to know when to reload.

All of one kind's keys share one hash tag (`{flows}`, `{prompts}`): a publish changes the
version, the live pointer and the generation in one atomic script. The price, one cluster slot
for all flows, is small: a flow library is kilobytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ivr import keys
from ivr.store import RedisClient

HISTORY_CAP = 200  # versions kept per document; older ones are pruned as new ones come
TRIAL_TTL_SECONDS = 4 * 3600  # a draft tried in the simulator stays runnable this long


def digest(text: str) -> str:
    """The content digest of a document's text (what tells two versions apart)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Publish a new version of one document.
# KEYS[1] latest version numbers (hash name -> n)   KEYS[2] live versions (hash name -> n)
# KEYS[3] this document's versions (hash n -> JSON)  KEYS[4] the kind's generation counter
# KEYS[5] digests of the files last imported (hash name -> sha256)  KEYS[6] drafts (hash)
# ARGV[1] name  ARGV[2] the version's JSON (text, author, comment, source, digest; "at" is set
# here from Redis' clock)  ARGV[3] the live version the publisher saw ("" = do not check)
# ARGV[4] the file digest when importing a file ("" otherwise)  ARGV[5] history cap
# ARGV[6] "1" to discard the document's draft
# Returns {n, at}: the new version; {0, 0} when the file was imported already, or its text is
# the live version's (say, written by `ivr flows export`): nothing published;
# {-1, live} when the live version is no longer ARGV[3] (someone published meanwhile).
PUBLISH = """
local name = ARGV[1]
if ARGV[4] ~= '' then
  if redis.call('HGET', KEYS[5], name) == ARGV[4] then return {0, 0} end
  redis.call('HSET', KEYS[5], name, ARGV[4])
  local live = redis.call('HGET', KEYS[2], name)
  local current = live and redis.call('HGET', KEYS[3], live)
  if current and cjson.decode(current).digest == ARGV[4] then return {0, 0} end
end
if ARGV[3] ~= '' then
  local live = redis.call('HGET', KEYS[2], name) or '0'
  if live ~= ARGV[3] then return {-1, tonumber(live)} end
end
local clock = redis.call('TIME')
local at = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local version = cjson.decode(ARGV[2])
version.at = at
local n = redis.call('HINCRBY', KEYS[1], name, 1)
redis.call('HSET', KEYS[3], tostring(n), cjson.encode(version))
redis.call('HSET', KEYS[2], name, n)
local stale = n - tonumber(ARGV[5])
if stale > 0 then redis.call('HDEL', KEYS[3], tostring(stale)) end
if ARGV[6] == '1' then redis.call('HDEL', KEYS[6], name) end
redis.call('INCR', KEYS[4])
return {n, at}
"""


# Stop serving a document (its history stays, so its numbers go on if it comes back).
# KEYS[1] live versions (hash)  KEYS[2] this document's versions  KEYS[3] generation counter
# KEYS[4] digests of the files last imported
# ARGV[1] name  ARGV[2] the source the live version must have ("" = any), e.g. "file": a flow
# whose file was removed goes, one made in the console stays
# Returns 1 when retired, 0 when it was not live (or came from elsewhere).
RETIRE = """
local live = redis.call('HGET', KEYS[1], ARGV[1])
if not live then return 0 end
if ARGV[2] ~= '' then
  local current = redis.call('HGET', KEYS[2], live)
  if not current or cjson.decode(current).source ~= ARGV[2] then return 0 end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""


# Freeze a draft for a simulated call, and note it among the kind's trials (what a sweep of
# recordings reads: a SCAN for trial keys would walk the whole keyspace).
# KEYS[1] the trial (string)  KEYS[2] the kind's trials (sorted set digest -> expires at, ms)
# ARGV[1] the text  ARGV[2] its digest  ARGV[3] lifetime (ms)
# Returns 1. Expired trials leave the set here; the set expires with the newest trial.
SAVE_TRIAL = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""


@dataclass(frozen=True)
class Version:
    """One published version of a document."""

    name: str
    number: int
    text: str
    author: str
    at: int  # ms since the epoch, from Redis' clock
    comment: str = ""
    source: str = "console"  # console | file | cli | rollback
    digest: str = ""

    @classmethod
    def from_json(cls, name: str, number: int, raw: str) -> Version:
        data = json.loads(raw)
        return cls(
            name=name,
            number=number,
            text=data["text"],
            author=data.get("author", ""),
            at=int(data.get("at", 0)),
            comment=data.get("comment", ""),
            source=data.get("source", "console"),
            digest=data.get("digest", ""),
        )


@dataclass(frozen=True)
class Draft:
    """Unpublished changes to a document: never served to a caller."""

    name: str
    text: str
    author: str
    updated_at: int
    base: int  # the live version the draft was started from (0: a new document)


class StalePublish(Exception):
    """Someone published the document after the publisher last looked: nothing was changed."""

    def __init__(self, live: int):
        super().__init__(f"version {live} was published meanwhile; review it and try again")
        self.live = live


class DocumentVersions:
    """The versions of one kind of document ("flows", "prompts"), by document name."""

    def __init__(self, client: RedisClient, kind: str, *, history_cap: int = HISTORY_CAP):
        self.redis = client
        self.kind = kind
        self.history_cap = history_cap
        self._publish = client.register_script(PUBLISH)
        self._retire = client.register_script(RETIRE)
        self._save_trial = client.register_script(SAVE_TRIAL)

    # -- reading -----------------------------------------------------------------------------

    def generation(self) -> int:
        """A number that changes whenever any document of this kind is published."""
        return int(self.redis.get(keys.documents_generation(self.kind)) or 0)

    def live_numbers(self) -> dict[str, int]:
        """Document name -> its live version number."""
        return {
            name: int(n) for name, n in self.redis.hgetall(keys.documents_live(self.kind)).items()
        }

    def live_versions(self) -> dict[str, Version]:
        """Every document's live version (one round trip per document, pipelined)."""
        numbers = self.live_numbers()
        pipe = self.redis.pipeline(transaction=False)
        for name, number in numbers.items():
            pipe.hget(keys.document_versions(self.kind, name), str(number))
        found = {}
        for (name, number), raw in zip(numbers.items(), pipe.execute(), strict=True):
            if raw is not None:
                found[name] = Version.from_json(name, number, raw)
        return found

    def live(self, name: str) -> Version | None:
        number = self.redis.hget(keys.documents_live(self.kind), name)
        return self.version(name, int(number)) if number else None

    def live_number(self, name: str) -> int | None:
        """The live version's number alone (one small read, fresh from Redis)."""
        number = self.redis.hget(keys.documents_live(self.kind), name)
        return int(number) if number else None

    def version(self, name: str, number: int) -> Version | None:
        raw = self.redis.hget(keys.document_versions(self.kind, name), str(number))
        return Version.from_json(name, number, raw) if raw is not None else None

    def history(self, name: str, limit: int = 50) -> list[Version]:
        """Versions of a document, newest first."""
        flat = self.redis.hgetall(keys.document_versions(self.kind, name))
        versions = [Version.from_json(name, int(n), raw) for n, raw in flat.items()]
        return sorted(versions, key=lambda v: v.number, reverse=True)[:limit]

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        text: str,
        *,
        author: str,
        comment: str = "",
        source: str = "console",
        expect_live: int | None = None,
        discard_draft: bool = True,
    ) -> Version:
        """Make `text` the live version of `name`. With `expect_live`, refuse (StalePublish) if
        another version went live since the publisher looked. The caller validated `text`."""
        number, at = self._run_publish(
            name, text, author, comment, source, expect_live, "", discard_draft
        )
        if number < 0:
            raise StalePublish(at)
        return Version(name, number, text, author, at, comment, source, digest(text))

    def import_file(self, name: str, text: str, *, author: str = "files") -> Version | None:
        """Publish a file's text unless this very text was the last imported for `name` (so
        every worker that notices a file change imports it once, and a console edit is not
        undone by a file nobody touched). None when there was nothing to do."""
        text_digest = digest(text)
        number, at = self._run_publish(
            name, text, author, "imported from a file", "file", None, text_digest, False
        )
        if number <= 0:
            return None
        return Version(name, number, text, author, at, "imported from a file", "file", text_digest)

    def retire(self, name: str, *, only_from: str = "") -> bool:
        """Stop serving `name` (only if its live version came from `only_from`, when given)."""
        retired = self._retire(
            keys=[
                keys.documents_live(self.kind),
                keys.document_versions(self.kind, name),
                keys.documents_generation(self.kind),
                keys.documents_file_digests(self.kind),
            ],
            args=[name, only_from],
        )
        return bool(retired)

    def rollback(self, name: str, to: int, *, author: str, comment: str = "") -> Version:
        """Publish a copy of version `to` as the newest version. LookupError if it is gone."""
        old = self.version(name, to)
        if old is None:
            raise LookupError(f"{self.kind} {name}: no version {to} (it may have been pruned)")
        return self.publish(
            name,
            old.text,
            author=author,
            comment=comment or f"rolled back to version {to}",
            source="rollback",
            discard_draft=False,
        )

    def _run_publish(
        self,
        name: str,
        text: str,
        author: str,
        comment: str,
        source: str,
        expect_live: int | None,
        file_digest: str,
        discard_draft: bool,
    ) -> tuple[int, int]:
        record = {
            "text": text,
            "author": author,
            "comment": comment,
            "source": source,
            "digest": digest(text),
        }
        number, at = self._publish(
            keys=[
                keys.documents_latest(self.kind),
                keys.documents_live(self.kind),
                keys.document_versions(self.kind, name),
                keys.documents_generation(self.kind),
                keys.documents_file_digests(self.kind),
                keys.documents_drafts(self.kind),
            ],
            args=[
                name,
                json.dumps(record),
                "" if expect_live is None else str(expect_live),
                file_digest,
                self.history_cap,
                "1" if discard_draft else "0",
            ],
        )
        return int(number), int(at)

    # -- drafts --------------------------------------------------------------------------------

    def draft(self, name: str) -> Draft | None:
        raw = self.redis.hget(keys.documents_drafts(self.kind), name)
        if raw is None:
            return None
        data = json.loads(raw)
        return Draft(name, data["text"], data["author"], int(data["updated_at"]), int(data["base"]))

    def drafts(self) -> dict[str, Draft]:
        flat = self.redis.hgetall(keys.documents_drafts(self.kind))
        out = {}
        for name, raw in flat.items():
            data = json.loads(raw)
            out[name] = Draft(
                name, data["text"], data["author"], int(data["updated_at"]), int(data["base"])
            )
        return out

    def save_draft(self, name: str, text: str, *, author: str, base: int, now_ms: int) -> Draft:
        """Keep `text` as the document's draft (one per document: the team edits together)."""
        record: dict[str, Any] = {
            "text": text,
            "author": author,
            "updated_at": now_ms,
            "base": base,
        }
        self.redis.hset(keys.documents_drafts(self.kind), name, json.dumps(record))
        return Draft(name, text, author, now_ms, base)

    def discard_draft(self, name: str) -> bool:
        return bool(self.redis.hdel(keys.documents_drafts(self.kind), name))

    # -- trials: a draft frozen for a simulated call ------------------------------------------

    def save_trial(self, text: str) -> str:
        """Freeze `text` for a simulated call (a draft may change while the call runs); the
        trial's id, its digest."""
        text_digest = digest(text)
        self._save_trial(
            keys=[keys.document_trial(self.kind, text_digest), keys.document_trials(self.kind)],
            args=[text, text_digest, TRIAL_TTL_SECONDS * 1000],
        )
        return text_digest

    def trial(self, text_digest: str) -> str | None:
        return self.redis.get(keys.document_trial(self.kind, text_digest))

    # -- everything kept, for what documents name (uploaded recordings) -----------------------

    def kept_records(self) -> Iterator[str]:
        """Every record of this kind Redis keeps, as stored (a trial's text, a draft's or a
        version's JSON), for finding the names the texts hold, such as uploaded recordings'
        (no JSON escaping changes one): trials, drafts, then every version of every document
        (live, history, retired). In that order a name copied while this reads is still met:
        a publish moves a draft into the versions (read after the drafts); a trial or a draft
        is copied from a draft or a live version that stays (read after it); a rollback
        copies within one document's hash (read at once). Not one snapshot: that would be a
        script reading megabytes while Redis waits."""
        trials = self.redis.zrange(keys.document_trials(self.kind), 0, -1)
        if trials:
            pipe = self.redis.pipeline(transaction=False)
            for text_digest in trials:
                pipe.get(keys.document_trial(self.kind, text_digest))
            yield from (text for text in pipe.execute() if text is not None)  # None: expired
        yield from self.redis.hvals(keys.documents_drafts(self.kind))
        names = set(self.redis.hkeys(keys.documents_latest(self.kind)))
        names |= set(self.redis.hkeys(keys.documents_live(self.kind)))
        for name in sorted(names):
            yield from self.redis.hvals(keys.document_versions(self.kind, name))


__all__ = ["DocumentVersions", "Draft", "StalePublish", "Version", "digest"]
