"""Recorded prompts uploaded in the console, kept in Redis so every worker on every host plays
them (a file written on one host would be missing on the others).

A recording is named by its content: `<sha256>.mp3` or `<sha256>.wav`. A catalog version names
the recordings it plays in its `recordings:` section (prompt key -> name), so a rollback brings
back the recording with the text, and the URL Twilio's <Play> fetches never changes meaning (it
can be cached for good). An upload is checked by its bytes, never its name: the type is sniffed
(filetype), then the audio is parsed frame by frame for its length (mutagen); a renamed text
file, an empty file or a header with no audio behind it is refused with the reason.

The app's Redis client decodes replies to str, so the audio is stored as base64 (a third
larger); decoded recordings are cached per process, bounded, since they never change.

Nothing grows without bound. An index in a slot of its own (`{recordings}`) counts every
stored recording: when it was last uploaded and its bytes, and their total against a cap
(RECORDINGS_MAX_MB). A recording lives in its own slot, so no script can write both:

- an upload is counted first (refused there when over the cap), then stored. A crash between
  leaves a count with no recording: it only errs towards refusing, until the sweep drops it;
- the sweep deletes a recording first, then uncounts it. A crash between leaves a count the
  next sweep drops; the other order could leave a recording nothing counts, never swept.

The sweep deletes what no prompts draft, kept version or trial names, once an hour (GRACE) has
passed since its last upload: an upload is stored before the draft that names it is written,
and a sweep must not fall between the two. It runs from the housekeeping chores of every
worker, one host at a time (a short lock), rather than after a publish or a draft's discard:
history is pruned by any publish, drafts change in many places, and a chore that failed or was
cut short is simply run again later, whoever runs it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import filetype
import mutagen
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from ivr import keys
from ivr.flows.versions import HISTORY_CAP
from ivr.store import RedisClient

log = logging.getLogger(__name__)

MAX_RECORDING_BYTES = 5 * 1024 * 1024
MAX_TOTAL_BYTES = 200 * 1024 * 1024  # RECORDINGS_MAX_MB's default: the audio of every upload
GRACE_SECONDS = 3600  # an upload nothing names is kept this long (its draft is written after)
SWEEP_INTERVAL_SECONDS = 600  # one host sweeps this often
MAX_RECORDING_SECONDS = 300.0  # a prompt; a longer upload is surely the wrong file
RECORDING_NAME = re.compile(r"^[0-9a-f]{64}\.(mp3|wav)$")
_NAMED = re.compile(r"([0-9a-f]{64})\.(?:mp3|wav)")  # a recording's name within a text
_CACHE_BYTES = 32 * 1024 * 1024
_TYPES = {"audio/mpeg": ("mp3", MP3), "audio/x-wav": ("wav", WAVE), "audio/wav": ("wav", WAVE)}
MIME_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


class BadRecording(ValueError):
    """An upload that is not a playable WAV or MP3, with the reason in words."""


@dataclass(frozen=True)
class Recording:
    name: str  # <sha256>.<mp3|wav>
    mime_type: str
    seconds: float
    size: int


def inspect_audio(data: bytes) -> Recording:
    """What an upload is, from its bytes; BadRecording when it is not a playable WAV or MP3."""
    if not data:
        raise BadRecording("the file is empty")
    if len(data) > MAX_RECORDING_BYTES:
        raise BadRecording(f"the file is larger than {MAX_RECORDING_BYTES // (1024 * 1024)} MB")
    kind = filetype.guess(data)
    if kind is None or kind.mime not in _TYPES:
        found = f"it looks like {kind.mime}" if kind else "its content is not audio"
        raise BadRecording(f"only WAV and MP3 recordings can be played; {found}")
    suffix, reader = _TYPES[kind.mime]
    try:
        seconds = float(reader(io.BytesIO(data)).info.length)
    except (mutagen.MutagenError, ValueError, EOFError, OSError) as exc:
        raise BadRecording(f"the {suffix.upper()} file cannot be read ({exc})") from None
    if not seconds > 0:
        raise BadRecording(f"the {suffix.upper()} file holds no audio")
    if seconds > MAX_RECORDING_SECONDS:
        raise BadRecording(
            f"the recording lasts {seconds:.0f} s; a prompt may last {MAX_RECORDING_SECONDS:.0f} s"
        )
    name = f"{hashlib.sha256(data).hexdigest()}.{suffix}"
    return Recording(name, MIME_TYPES[suffix], round(seconds, 2), len(data))


# Count an upload before it is stored: its digest in the index, its bytes in the total.
# KEYS[1] the index (sorted set digest -> last upload, ms)  KEYS[2] sizes (hash digest -> bytes)
# KEYS[3] the total (string, bytes)
# ARGV[1] digest  ARGV[2] bytes  ARGV[3] uploaded at (ms)  ARGV[4] the cap in bytes ("" = none:
# counting recordings stored before the index, which are there already)
# Returns {1, total} when counted; {2, total} when counted already (only its upload time
# moves on, so the sweep spares it); {0, total} when over the cap: nothing written.
COUNT_RECORDING = """
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
  return {2, total}
end
if ARGV[4] ~= '' and total + tonumber(ARGV[2]) > tonumber(ARGV[4]) then return {0, total} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1, redis.call('INCRBY', KEYS[3], ARGV[2])}
"""

# Keep an upload, once: the audio and what describes it in one step, so no reader ever sees
# audio without its type and length (two commands could be cut apart by a crash).
# KEYS[1] the recording's hash (its own slot)
# ARGV[1] audio (base64)  ARGV[2] MIME type  ARGV[3] seconds  ARGV[4] bytes  ARGV[5] uploaded by
# ARGV[6] uploaded at (ms)
# Returns 1 when stored, 0 when these bytes were stored already (the first upload is kept; the
# time of this one is noted, so a sweep that chose it before this upload leaves it).
STORE_RECORDING = """
if redis.call('HEXISTS', KEYS[1], 'audio') == 1 then
  redis.call('HSET', KEYS[1], 'last_uploaded_at', ARGV[6])
  return 0
end
redis.call('HSET', KEYS[1], 'audio', ARGV[1], 'type', ARGV[2], 'seconds', ARGV[3],
           'bytes', ARGV[4], 'uploaded_by', ARGV[5], 'uploaded_at', ARGV[6],
           'last_uploaded_at', ARGV[6])
return 1
"""

# Delete a recording the sweep chose, unless it was uploaded again since the cutoff.
# KEYS[1] the recording's hash
# ARGV[1] the cutoff (ms): uploaded last at or before it, it goes
# Returns 1 when deleted (or gone already), 0 when uploaded since.
DELETE_RECORDING = """
local times = redis.call('HMGET', KEYS[1], 'uploaded_at', 'last_uploaded_at')
local last = math.max(tonumber(times[1] or '0') or 0, tonumber(times[2] or '0') or 0)
if last > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Uncount a recording the sweep deleted, unless it was uploaded again since the cutoff (that
# upload counted it anew, or will store it again).
# KEYS[1] the index  KEYS[2] sizes  KEYS[3] the total
# ARGV[1] digest  ARGV[2] the cutoff (ms)
# Returns 1 when uncounted, 0 when not counted or uploaded since.
UNCOUNT_RECORDING = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at or tonumber(at) > tonumber(ARGV[2]) then return 0 end
local size = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if size then redis.call('DECRBY', KEYS[3], size) end
return 1
"""


class RecordingsFull(Exception):
    """An upload refused because the stored recordings would exceed RECORDINGS_MAX_MB; the
    message says what to do, for the editor."""

    def __init__(self, total: int, size: int, limit: int):
        super().__init__(
            f"there is no room for it: the stored recordings total {_mb(total)}, and its "
            f"{_mb(size)} would pass the limit of {_mb(limit)} (RECORDINGS_MAX_MB). A recording "
            f"no draft or kept version (the last {HISTORY_CAP} of each language) names is "
            "deleted an hour after its last upload: take unused ones out of the drafts, or ask "
            "an admin to raise the limit"
        )


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def named_recordings(records: Iterable[str]) -> set[str]:
    """The digests of the recordings these texts name, wherever in them (a mention in a
    comment keeps one too: the sweep errs towards keeping)."""
    return {digest for text in records for digest in _NAMED.findall(text)}


class Recordings:
    """Uploaded recordings by name, in Redis, counted against a total and swept when unused."""

    def __init__(
        self,
        client: RedisClient,
        *,
        max_total_bytes: int = MAX_TOTAL_BYTES,
        grace_seconds: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self._redis = client
        self.max_total_bytes = max_total_bytes
        self.grace_ms = int(grace_seconds * 1000)
        self._clock = clock  # wall-clock seconds: upload times are compared across hosts
        self._count = client.register_script(COUNT_RECORDING)
        self._store = client.register_script(STORE_RECORDING)
        self._delete = client.register_script(DELETE_RECORDING)
        self._uncount = client.register_script(UNCOUNT_RECORDING)
        self._cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._next_sweep_look = 0.0

    def store(self, data: bytes, *, uploaded_by: str) -> Recording:
        """Check, count and keep an upload; the same bytes uploaded twice are kept (and counted)
        once. BadRecording when it is not a playable recording, RecordingsFull over the cap."""
        recording = inspect_audio(data)
        digest = recording.name.split(".")[0]
        now_ms = self._now_ms()
        counted, total = self._count(
            keys=self._count_keys(), args=[digest, recording.size, now_ms, self.max_total_bytes]
        )
        if not int(counted):
            raise RecordingsFull(int(total), recording.size, self.max_total_bytes)
        self._store(
            keys=[keys.prompt_recording(digest)],
            args=[
                base64.b64encode(data).decode("ascii"),
                recording.mime_type,
                str(recording.seconds),
                str(recording.size),
                uploaded_by,
                str(now_ms),
            ],
        )
        return recording

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self, kept_records: Callable[[], Iterable[str]]) -> list[str]:
        """Delete the recordings last uploaded over the grace period ago that no text of
        `kept_records` (every prompts record Redis keeps) names; the digests deleted. The old
        ones are listed before the texts are read, so a name written meanwhile is seen."""
        cutoff = self._now_ms() - self.grace_ms
        chosen = self._redis.zrangebyscore(keys.recordings_index(), "-inf", cutoff)
        if not chosen:
            return []
        named = named_recordings(kept_records())
        deleted = []
        for digest in chosen:
            if digest in named:
                continue
            # Deleted first, uncounted second (see the module's docstring); either step
            # refuses when an upload of the same bytes came after the cutoff.
            if self._delete(keys=[keys.prompt_recording(digest)], args=[cutoff]):
                self._uncount(keys=self._count_keys(), args=[digest, cutoff])
                deleted.append(digest)
        if deleted:
            log.info("recordings: %d no prompts text names were deleted", len(deleted))
        return deleted

    def sweep_if_due(self, kept_records: Callable[[], Iterable[str]]) -> list[str] | None:
        """The housekeeping chore: sweep when no host swept in the last SWEEP_INTERVAL (a lock
        with that expiry, taken by whoever asks first; this process asks once a minute at
        most). None when it was not this process's turn."""
        now = self._clock()
        if now < self._next_sweep_look:
            return None
        self._next_sweep_look = now + 60
        taken = self._redis.set(
            keys.recordings_sweep(),
            f"{socket.gethostname()}:{os.getpid()}",
            nx=True,
            px=SWEEP_INTERVAL_SECONDS * 1000,
        )
        return self.sweep(kept_records) if taken else None

    def count_stored(self) -> int:
        """Count the recordings stored before the index existed (a SCAN of the keyspace, for
        `ivr migrate`), so the cap sees them and the sweep finds them; how many were not
        counted yet. Idempotent."""
        counted = 0
        for key in set(self._redis.scan_iter(match=keys.prompt_recordings_match(), count=1000)):
            digest = keys.prompt_recording_digest(key)
            size, first, last = self._redis.hmget(key, "bytes", "uploaded_at", "last_uploaded_at")
            if digest is None or size is None:
                continue
            at = max(int(first or 0), int(last or 0)) or self._now_ms()
            found, _total = self._count(keys=self._count_keys(), args=[digest, size, at, ""])
            counted += int(found) == 1
        return counted

    def _count_keys(self) -> list[str]:
        return [keys.recordings_index(), keys.recordings_sizes(), keys.recordings_total()]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def exists(self, name: str) -> bool:
        return bool(RECORDING_NAME.match(name)) and bool(
            self._redis.hexists(keys.prompt_recording(name.split(".")[0]), "audio")
        )

    def seconds(self, name: str) -> float | None:
        """How long a stored recording lasts, for the page; None when it is not stored."""
        if not RECORDING_NAME.match(name):
            return None
        value = self._redis.hget(keys.prompt_recording(name.split(".")[0]), "seconds")
        return float(value) if value else None

    def audio(self, name: str) -> tuple[bytes, str] | None:
        """A recording's bytes and MIME type; None when no such recording is stored."""
        if not RECORDING_NAME.match(name):
            return None
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
        encoded, mime_type = self._redis.hmget(
            keys.prompt_recording(name.split(".")[0]), "audio", "type"
        )
        if not encoded:
            return None
        found = (base64.b64decode(encoded), mime_type or MIME_TYPES[name.rsplit(".", 1)[1]])
        with self._lock:
            if name not in self._cache:
                self._cache[name] = found
                self._cached_bytes += len(found[0])
            while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
                _, (evicted, _) = self._cache.popitem(last=False)
                self._cached_bytes -= len(evicted)
        return found
