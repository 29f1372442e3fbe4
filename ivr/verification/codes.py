"""One-time codes and the keys that protect them.

A code is drawn with `secrets`, stored only as an HMAC (checked in Redis, in constant time) and,
for the delivery window, sealed with AES-GCM so the voice call can speak it at answer time and on
"repeat" without it ever sitting in Redis in plain text. Each purpose gets its own key, derived
from SECRET_KEY with HKDF, so no key serves two purposes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12


def derive_key(secret_key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from SECRET_KEY."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"ivr/{purpose}".encode()
    ).derive(secret_key)


def generate_code(length: int) -> str:
    """`length` uniformly random decimal digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**length):0{length}d}"


def scope_tag(scope: str | None) -> str:
    """Eight hex digits naming a pending-verification scope (an IVR call's, flash calls', one
    missed-call number's, or none): part of the pending verification's key and of its sid.
    Not secret; a clash between two scopes of one number is caught (the key holds its scope)."""
    return hashlib.sha256((scope or "").encode()).hexdigest()[:8]


class SealError(Exception):
    """A sealed code that does not open: wrong key, tampered, or bound to another sid."""


class CodeSecrets:
    """Hashing, sealing and routing tags, each with its own derived key."""

    def __init__(self, secret_key: bytes):
        self._hash_key = derive_key(secret_key, "code-hmac")
        self._seal = AESGCM(derive_key(secret_key, "code-seal"))
        self._tag_key = derive_key(secret_key, "routing-tag")

    def digest(self, code: str) -> str:
        """HMAC-SHA256 of a code, base64url without padding (43 characters, so the hash it is
        kept in stays a listpack): what Redis compares, never the code itself."""
        mac = hmac.new(self._hash_key, code.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def seal(self, context: str, text: str) -> str:
        """Encrypt `text` (a code, a simulated SMS) bound to `context` (its sid)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + self._seal.encrypt(nonce, text.encode(), context.encode())
        return base64.urlsafe_b64encode(sealed).decode()

    def unseal(self, context: str, sealed: str) -> str:
        """The text sealed for `context`; SealError when it does not open."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            nonce, box = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return self._seal.decrypt(nonce, box, context.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SealError("sealed code does not open") from exc

    def bucket(self, e164: str) -> str:
        """Two hex digits from a keyed hash of the number: the Redis bucket (hash tag) of its
        verifications (see keys.BUCKETS). Keyed, so key names do not let anyone enumerate
        numbers."""
        return self._number_hash(e164)[:2]

    def number_id(self, e164: str) -> str:
        """Twelve more hex digits of that hash: the number's name in Redis keys, never the
        number itself."""
        return self._number_hash(e164)[2:14]

    def new_sid(self, e164: str, scope: str | None = None) -> str:
        """A fresh verification sid for `e164` in `scope`: "VE", the number's bucket and id,
        the scope's tag and 40 random bits, so a lookup by sid is given every key it needs
        (the pending verification's and the ended one's) without another round trip."""
        return f"VE{self._number_hash(e164)[:14]}{scope_tag(scope)}{secrets.token_hex(5)}"

    def _number_hash(self, e164: str) -> str:
        return hmac.new(self._tag_key, e164.encode(), hashlib.sha256).hexdigest()
