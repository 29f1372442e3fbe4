"""What a verification is, as the API and the webhooks see it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Twilio Verify's statuses; every one but `pending` is final."""

    PENDING = "pending"
    APPROVED = "approved"
    EXPIRED = "expired"
    MAX_ATTEMPTS_REACHED = "max_attempts_reached"
    CANCELED = "canceled"
    FAILED = "failed"


class Channel(StrEnum):
    CALL = "call"
    SMS = "sms"
    MISSED_CALL = "missed_call"  # the user rings our number; we reject the call
    FLASH_CALL = "flash_call"  # we ring the user; our caller ID's last digits are the code


# "VE" + the number's bucket (2 hex) and id (12 hex), the scope's tag (8 hex), 10 random hex:
# 32 hex digits, like a Twilio sid (see CodeSecrets.new_sid).
SID_PATTERN = re.compile(r"^VE[0-9a-f]{32}$")
SID_SHAPE = "VE followed by 32 hex digits (0-9, a-f)"  # SID_PATTERN, for people


def is_sid(value: object) -> bool:
    return isinstance(value, str) and SID_PATTERN.fullmatch(value) is not None


_CALL_SID_PATTERN = re.compile(r"^CA[0-9a-f]{32}$")


def is_call_sid(value: object) -> bool:
    """True for a Twilio CallSid (CA + 32 hex digits): what call state is keyed by."""
    return isinstance(value, str) and _CALL_SID_PATTERN.fullmatch(value) is not None


def bucket_of(sid: str) -> str:
    """The number's bucket embedded in a sid (see CodeSecrets.new_sid)."""
    return sid[2:4]


def number_id_of(sid: str) -> str:
    """The number's id embedded in a sid (see CodeSecrets.new_sid)."""
    return sid[4:16]


def scope_tag_of(sid: str) -> str:
    """The pending-verification scope's tag embedded in a sid (see CodeSecrets.new_sid)."""
    return sid[16:24]


def iso_time(epoch_ms: int | str | None) -> str | None:
    """RFC 3339 UTC timestamp, second precision, as the API returns times."""
    if epoch_ms in (None, ""):
        return None
    moment = datetime.fromtimestamp(int(epoch_ms) / 1000, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SendAttempt:
    """One delivery of the code: a call or an SMS, with the carrier's latest status."""

    channel: str
    status: str
    created_at: int
    provider_sid: str | None = None
    error: str | None = None
    updated_at: int | None = None

    @classmethod
    def from_fields(cls, data: dict[str, str], index: int) -> SendAttempt:
        """Attempt `index` of a stored verification: field a<i> holds channel|status|created|
        updated (ms after the verification's c), a<i>p the provider's sid, a<i>e the error (see
        ivr.verification.store)."""
        channel, status, created, updated = data[f"a{index}"].split("|")
        start = int(data["c"])
        return cls(
            channel=channel,
            status=status,
            created_at=start + int(created),
            provider_sid=data.get(f"a{index}p") or None,
            error=data.get(f"a{index}e") or None,
            updated_at=start + int(updated),
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "status": self.status,
            "provider_sid": self.provider_sid,
            "error": self.error,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at or self.created_at),
        }


@dataclass(frozen=True)
class Verification:
    """A verification as stored in its Redis hash, with the status as of `now_ms`."""

    sid: str
    to: str
    channel: str
    locale: str
    status: Status
    created_at: int
    expires_at: int
    updated_at: int
    check_attempts: int
    send_attempts: tuple[SendAttempt, ...] = field(default_factory=tuple)
    call_to: str | None = None  # missed_call: the number the user rings
    caller_id_attestation: str | None = None  # missed_call: STIR/SHAKEN of the call (A/B/C…)
    code_length: int | None = None  # flash_call: how many last digits of the caller ID
    service_sid: str | None = None  # the Verify Service it belongs to; None: the default one
    custom_friendly_name: str | None = None  # said instead of the Service's name

    @classmethod
    def from_hash(cls, sid: str, data: dict[str, str], now_ms: int | None = None) -> Verification:
        """Read a stored hash (field names: see ivr.verification.store); a pending verification
        past its expiry reads as expired."""
        status = Status(data["st"])
        expires_at = int(data["x"])
        if status is Status.PENDING and now_ms is not None and now_ms >= expires_at:
            status = Status.EXPIRED
        return cls(
            sid=sid,
            to=data["to"],
            channel=data["ch"],
            locale=data["lo"],
            status=status,
            created_at=int(data["c"]),
            expires_at=expires_at,
            updated_at=int(data.get("u") or data["c"]),
            check_attempts=int(data.get("k") or 0),
            send_attempts=tuple(
                SendAttempt.from_fields(data, index) for index in range(int(data.get("n") or 0))
            ),
            call_to=data.get("ct") or None,
            caller_id_attestation=data.get("at") or None,
            code_length=int(data["cl"]) if data.get("cl") else None,
            service_sid=data.get("sv") or None,
            custom_friendly_name=data.get("fn") or None,
        )

    def to_api(self) -> dict[str, Any]:
        """The public representation: never the code, its hash or its sealed copy."""
        return {
            "sid": self.sid,
            "to": self.to,
            "channel": self.channel,
            "locale": self.locale,
            "status": str(self.status),
            "valid": self.status is Status.APPROVED,
            "check_attempts": self.check_attempts,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at),
            "expires_at": iso_time(self.expires_at),
            "send_attempts": [attempt.to_api() for attempt in self.send_attempts],
            **self._channel_fields(),
        }

    def _channel_fields(self) -> dict[str, Any]:
        if self.channel == Channel.MISSED_CALL:
            return {"call_to": self.call_to, "caller_id_attestation": self.caller_id_attestation}
        if self.channel == Channel.FLASH_CALL:
            return {"code_length": self.code_length}
        return {}
