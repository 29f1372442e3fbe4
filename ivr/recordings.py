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
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import filetype
import mutagen
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from ivr import keys
from ivr.store import RedisClient

MAX_RECORDING_BYTES = 5 * 1024 * 1024
MAX_RECORDING_SECONDS = 300.0  # a prompt; a longer upload is surely the wrong file
RECORDING_NAME = re.compile(r"^[0-9a-f]{64}\.(mp3|wav)$")
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


# Keep an upload, once: the audio and what describes it in one step, so no reader ever sees
# audio without its type and length (two commands could be cut apart by a crash).
# KEYS[1] the recording's hash (its own slot)
# ARGV[1] audio (base64)  ARGV[2] MIME type  ARGV[3] seconds  ARGV[4] bytes  ARGV[5] uploaded by
# ARGV[6] uploaded at (ms)
# Returns 1 when stored, 0 when these bytes were stored already (the first upload is kept).
STORE_RECORDING = """
if redis.call('HEXISTS', KEYS[1], 'audio') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'audio', ARGV[1], 'type', ARGV[2], 'seconds', ARGV[3],
           'bytes', ARGV[4], 'uploaded_by', ARGV[5], 'uploaded_at', ARGV[6])
return 1
"""


class Recordings:
    """Uploaded recordings by name, in Redis."""

    def __init__(self, client: RedisClient):
        self._redis = client
        self._store = client.register_script(STORE_RECORDING)
        self._cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def store(self, data: bytes, *, uploaded_by: str) -> Recording:
        """Check and keep an upload; the same bytes uploaded twice are kept once."""
        recording = inspect_audio(data)
        self._store(
            keys=[keys.prompt_recording(recording.name.split(".")[0])],
            args=[
                base64.b64encode(data).decode("ascii"),
                recording.mime_type,
                str(recording.seconds),
                str(recording.size),
                uploaded_by,
                str(int(time.time() * 1000)),
            ],
        )
        return recording

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
