"""Verify Services: named sets of verification settings, each with its own verifications.

A Service is what Twilio Verify calls one: the name said in the call and the SMS ("Your Acme
Bank verification code is…"), the code's length, whether the callee presses a key before the
code is read, and the rest of Twilio's settings. A verification belongs to the Service it was
started in: its pending pointer is per (number, Service), its per-number send limit counts per
Service (the fraud limits per prefix and per client stay global), and no other Service can
read, check or cancel it.

The default Service is not stored: its sid is derived from SECRET_KEY (the same on every host)
and its settings come from the environment (APP_NAME, OTP_LENGTH); `/v1` uses it, and so do
the IVR's calls. The others live in Redis, in one slot (a deployment has a handful, and one
script writes a Service and its place in the list together).

Settings Twilio has and this server does not act on (push, TOTP, WhatsApp, passkeys, PSD2,
lookup, templates) are accepted, stored and returned, so an app's calls keep working; the
documentation says which they are.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ivr import keys
from ivr.store import RedisClient
from ivr.verification.codes import derive_key

SERVICE_SID = re.compile(r"^VA[0-9a-f]{32}$")
# What Twilio's <Say voice=…> takes: a voice the code call is read in (TtsName).
TTS_VOICE = re.compile(
    r"^(man|woman|alice|Polly\.[A-Za-z]+(-Neural|-Generative)?|Google\.[A-Za-z0-9-]+)$"
)
MAX_SERVICES = 1000
CODE_LENGTHS = range(4, 11)
MAX_FRIENDLY_NAME = 30  # Twilio's limit for a Service's name (said in every call and SMS)
_CACHE_SECONDS = 2.0  # another host's edit is seen within this long
_UPDATE_TRIES = 50  # optimistic: a busy Service is read again, after a short random pause

# Twilio's nested settings, with every member (null until set): returned as Twilio returns them.
NESTED_DEFAULTS: dict[str, dict[str, Any]] = {
    "push": {"include_date": False, "apn_credential_sid": None, "fcm_credential_sid": None},
    "totp": {"issuer": None, "time_step": None, "code_length": None, "skew": None},
    "whatsapp": {"msg_service_sid": None, "from": None},
    "passkeys": {
        "relying_party": {"id": None, "name": None, "origins": []},
        "authenticator_attachment": None,
        "discoverable_credentials": None,
        "user_verification": None,
    },
}


class ServiceError(Exception):
    """A setting refused: `field` names it (Twilio's wire name), `detail` says why."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field
        self.detail = detail


class TooManyServices(Exception):
    """MAX_SERVICES are stored already."""


class ConcurrentUpdates(Exception):
    """The Service changed under each of our tries: answered as a busy store (503)."""


class ReadOnlyService(Exception):
    """The default Service is configured by the environment, not through the API."""


@dataclass(frozen=True)
class VerifyService:
    """One Service's settings; `created_at` and `updated_at` in ms."""

    sid: str
    friendly_name: str
    code_length: int = 6
    dtmf_input_required: bool = True
    skip_sms_to_landlines: bool = False
    tts_name: str | None = None
    do_not_share_warning_enabled: bool = False
    custom_code_enabled: bool = False
    lookup_enabled: bool = False
    psd2_enabled: bool = False
    default_template_sid: str | None = None
    verify_event_subscription_enabled: bool = False
    nested: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(NESTED_DEFAULTS)))
    created_at: int = 0
    updated_at: int = 0
    revision: int = 0  # one more at each update: two at once never both win (UPDATE_SERVICE)
    is_default: bool = False

    def to_record(self) -> str:
        data = asdict(self)
        data.pop("is_default")
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_record(cls, text: str) -> VerifyService:
        data = json.loads(text)
        known = {name for name in cls.__dataclass_fields__ if name != "is_default"}
        fields = {name: value for name, value in data.items() if name in known}
        # A record written before a nested setting existed gets its defaults, member by member.
        fields["nested"] = _merged(NESTED_DEFAULTS, fields.get("nested") or {})
        return cls(**fields)


def _merged(defaults: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    merged = json.loads(json.dumps(defaults))
    for name, value in stored.items():
        if isinstance(merged.get(name), dict) and isinstance(value, dict):
            merged[name] = _merged(merged[name], value)
        else:
            merged[name] = value
    return merged


# The settings a create or an update may change, by Twilio's wire name: (attribute, kind).
_FLAT_SETTINGS: dict[str, tuple[str, str]] = {
    "FriendlyName": ("friendly_name", "name"),
    "CodeLength": ("code_length", "code_length"),
    "DtmfInputRequired": ("dtmf_input_required", "bool"),
    "SkipSmsToLandlines": ("skip_sms_to_landlines", "bool"),
    "TtsName": ("tts_name", "voice"),
    "DoNotShareWarningEnabled": ("do_not_share_warning_enabled", "bool"),
    "CustomCodeEnabled": ("custom_code_enabled", "bool"),
    "LookupEnabled": ("lookup_enabled", "bool"),
    "Psd2Enabled": ("psd2_enabled", "bool"),
    "DefaultTemplateSid": ("default_template_sid", "text"),
    "VerifyEventSubscriptionEnabled": ("verify_event_subscription_enabled", "bool"),
}
# Nested ones: wire name -> (path in `nested`, kind).
_NESTED_SETTINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "Push.IncludeDate": (("push", "include_date"), "bool"),
    "Push.ApnCredentialSid": (("push", "apn_credential_sid"), "text"),
    "Push.FcmCredentialSid": (("push", "fcm_credential_sid"), "text"),
    "Totp.Issuer": (("totp", "issuer"), "text"),
    "Totp.TimeStep": (("totp", "time_step"), "int:20:60"),
    "Totp.CodeLength": (("totp", "code_length"), "int:3:8"),
    "Totp.Skew": (("totp", "skew"), "int:0:2"),
    "Whatsapp.MsgServiceSid": (("whatsapp", "msg_service_sid"), "text"),
    "Whatsapp.From": (("whatsapp", "from"), "text"),
    "Passkeys.RelyingParty.Id": (("passkeys", "relying_party", "id"), "text"),
    "Passkeys.RelyingParty.Name": (("passkeys", "relying_party", "name"), "text"),
    "Passkeys.RelyingParty.Origins": (("passkeys", "relying_party", "origins"), "list"),
    "Passkeys.AuthenticatorAttachment": (("passkeys", "authenticator_attachment"), "text"),
    "Passkeys.DiscoverableCredentials": (("passkeys", "discoverable_credentials"), "text"),
    "Passkeys.UserVerification": (("passkeys", "user_verification"), "text"),
}
SETTING_NAMES = frozenset(_FLAT_SETTINGS) | frozenset(_NESTED_SETTINGS)


def parse_bool(wire_name: str, value: str) -> bool:
    """Twilio's booleans on the wire: "true"/"false" (any case; the SDKs send lower case)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ServiceError(wire_name, f"{wire_name} must be true or false")


def _parse(wire_name: str, kind: str, value: str) -> Any:
    if kind == "bool":
        return parse_bool(wire_name, value)
    if kind == "name":
        name = value.strip()
        if not name or len(name) > MAX_FRIENDLY_NAME:
            raise ServiceError(
                wire_name, f"{wire_name} must be 1 to {MAX_FRIENDLY_NAME} characters"
            )
        if sum(char.isdigit() for char in name) > 4 or not name.isprintable():
            raise ServiceError(
                wire_name, f"{wire_name} may hold at most 4 digits and no control characters"
            )
        return name
    if kind == "code_length":
        if not re.fullmatch(r"[0-9]{1,2}", value.strip()) or int(value) not in CODE_LENGTHS:
            raise ServiceError(wire_name, f"{wire_name} must be a whole number from 4 to 10")
        return int(value)
    if kind.startswith("int:"):
        low, high = (int(bound) for bound in kind.split(":")[1:])
        if not re.fullmatch(r"[0-9]{1,3}", value.strip()) or not low <= int(value) <= high:
            raise ServiceError(
                wire_name, f"{wire_name} must be a whole number from {low} to {high}"
            )
        return int(value)
    if kind == "voice":
        if value and not TTS_VOICE.fullmatch(value):
            raise ServiceError(
                wire_name,
                f"{wire_name} must be a voice of Twilio's <Say>: man, woman, alice, "
                "Polly.<Name> or Google.<name>",
            )
        return value or None
    if kind == "list":
        return [part.strip() for part in value.split(",") if part.strip()][:20]
    if len(value) > 200 or not value.isprintable():
        raise ServiceError(wire_name, f"{wire_name} must be at most 200 printable characters")
    return value or None


def apply_settings(service: VerifyService, form: Mapping[str, str]) -> VerifyService:
    """`service` with the settings `form` gives (Twilio's wire names; the others are left
    alone: an update is partial, as Twilio's is). ServiceError names the first refused."""
    changes: dict[str, Any] = {}
    for wire_name, (attribute, kind) in _FLAT_SETTINGS.items():
        if wire_name in form:
            changes[attribute] = _parse(wire_name, kind, form[wire_name])
    nested = json.loads(json.dumps(service.nested))
    for wire_name, (path, kind) in _NESTED_SETTINGS.items():
        if wire_name in form:
            place = nested
            for step in path[:-1]:
                place = place.setdefault(step, {})
            place[path[-1]] = _parse(wire_name, kind, form[wire_name])
    return replace(service, **changes, nested=nested)


class VerifyServices:
    """The Services of this deployment: the default one, and those stored in Redis."""

    def __init__(
        self,
        client: RedisClient,
        secret_key: bytes,
        default_name: str,
        default_code_length: int,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self._redis = client
        self._clock = clock_ms
        self.default_sid = "VA" + derive_key(secret_key, "verify-default-service").hex()[:32]
        self.account_sid = "AC" + derive_key(secret_key, "verify-account").hex()[:32]
        self.default = VerifyService(
            sid=self.default_sid,
            friendly_name=default_name[:MAX_FRIENDLY_NAME],
            code_length=default_code_length,
            is_default=True,
        )
        self._create = client.register_script(CREATE_SERVICE)
        self._update = client.register_script(UPDATE_SERVICE)
        self._cache: dict[str, tuple[float, VerifyService | None]] = {}
        self._lock = threading.Lock()

    def get(self, sid: str) -> VerifyService | None:
        """The Service `sid`, or None; read from Redis at most every couple of seconds."""
        if not SERVICE_SID.fullmatch(sid):
            return None
        if hmac.compare_digest(sid, self.default_sid):
            return self.default
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(sid)
        if cached is not None and now - cached[0] < _CACHE_SECONDS:
            return cached[1]
        record = self._redis.get(keys.verify_service(sid))
        found = VerifyService.from_record(record) if record else None
        with self._lock:
            if len(self._cache) > 2 * MAX_SERVICES:
                self._cache.clear()
            self._cache[sid] = (now, found)
        return found

    def create(self, form: Mapping[str, str]) -> VerifyService:
        """A new Service from Twilio's create parameters (FriendlyName is required)."""
        if not (form.get("FriendlyName") or "").strip():
            raise ServiceError("FriendlyName", "FriendlyName is required")
        now = self._clock()
        service = apply_settings(
            VerifyService(sid="VA" + secrets.token_hex(16), friendly_name="-", created_at=now), form
        )
        service = replace(service, updated_at=now)
        created = self._create(
            keys=[keys.verify_service(service.sid), keys.verify_services()],
            args=[service.to_record(), now, MAX_SERVICES, service.sid],
        )
        if not int(created):
            raise TooManyServices()
        self._forget(service.sid)
        return service

    def update(self, sid: str, form: Mapping[str, str]) -> VerifyService | None:
        """The Service with the settings `form` changes; None when there is no such Service."""
        if SERVICE_SID.fullmatch(sid) and hmac.compare_digest(sid, self.default_sid):
            raise ReadOnlyService()
        for _ in range(_UPDATE_TRIES):
            current = self._read(sid)
            if current is None:
                return None
            updated = replace(
                apply_settings(current, form),
                updated_at=self._clock(),
                revision=current.revision + 1,
            )
            written = int(
                self._update(
                    keys=[keys.verify_service(sid)],
                    args=[updated.to_record(), current.revision],
                )
            )
            if written >= 0:
                self._forget(sid)
                return updated if written else None
            time.sleep(secrets.randbelow(5000) / 1_000_000)  # up to 5 ms: let the other finish
        raise ConcurrentUpdates()

    def delete(self, sid: str) -> bool:
        """Delete a stored Service; False when there is none. Its verifications end by their
        own expiry: nothing can reach them once the Service is gone."""
        if not SERVICE_SID.fullmatch(sid):
            return False
        if hmac.compare_digest(sid, self.default_sid):
            raise ReadOnlyService()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.verify_service(sid))
        pipe.zrem(keys.verify_services(), sid)
        deleted, _ = pipe.execute()
        self._forget(sid)
        return bool(deleted)

    def page(self, page: int, page_size: int) -> tuple[list[VerifyService], bool]:
        """One page of every Service, the default first, then the stored ones oldest first;
        and whether another page follows."""
        start = page * page_size
        stored_start = max(0, start - 1)
        stored_count = page_size - (1 if start == 0 else 0)
        sids = self._redis.zrange(keys.verify_services(), stored_start, stored_start + stored_count)
        more = len(sids) > stored_count
        services = [self.default] if start == 0 else []
        records = (
            self._redis.mget([keys.verify_service(sid) for sid in sids[:stored_count]])
            if sids
            else []
        )
        services += [VerifyService.from_record(record) for record in records if record]
        return services, more

    def _read(self, sid: str) -> VerifyService | None:
        if not SERVICE_SID.fullmatch(sid):
            return None
        record = self._redis.get(keys.verify_service(sid))
        return VerifyService.from_record(record) if record else None

    def _forget(self, sid: str) -> None:
        with self._lock:
            self._cache.pop(sid, None)


# Store a new Service and its place in the list, unless MAX_SERVICES are stored.
# KEYS[1] the Service's record  KEYS[2] the list (sorted set, by creation time)
# ARGV[1] the record (JSON)  ARGV[2] created at (ms)  ARGV[3] MAX_SERVICES  ARGV[4] its sid
# Returns 1 when stored, 0 when the list is full.
CREATE_SERVICE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""


# Replace a Service's record with an update made from revision ARGV[2], unless another update
# came in between (each makes the revision one more) or it was deleted meanwhile: two partial
# updates at once never lose one another's settings.
# KEYS[1] the Service's record
# ARGV[1] the new record (JSON, its revision one more)  ARGV[2] the revision it was made from
# Returns 1 when written, 0 when the Service is gone, -1 when it changed (read it again).
UPDATE_SERVICE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if (cjson.decode(current).revision or 0) ~= tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
