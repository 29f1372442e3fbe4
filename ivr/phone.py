"""Phone numbers: parse, normalise to E.164, and refuse what we must not call or text.

Toll fraud (IRSF, "SMS pumping") makes a verification service pay for calls to premium and
shared-cost ranges, so every number is classified by phonenumbers before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

# Kinds of number that cost us money or never reach a person; each refused with its own reason.
REFUSED_TYPES: dict[int, str] = {
    PhoneNumberType.PREMIUM_RATE: "premium-rate numbers are refused (toll-fraud risk)",
    PhoneNumberType.SHARED_COST: "shared-cost numbers are refused (toll-fraud risk)",
    PhoneNumberType.UAN: "universal access numbers are refused (they do not reach one person)",
    PhoneNumberType.PAGER: "pager numbers are refused (they cannot answer a call)",
    PhoneNumberType.VOICEMAIL: "voicemail-only numbers are refused (nobody can press a key)",
    PhoneNumberType.PERSONAL_NUMBER: "personal (follow-me) numbers are refused (costly, "
    "and they forward to unknown phones)",
}

# Suffix length that the per-prefix send limit strips: numbers that differ only in their last
# four digits are one range to a fraudster pumping sequential numbers.
PREFIX_STRIPPED_DIGITS = 4


class NumberRefused(ValueError):
    """A number we will not use, with a machine-readable reason and a sentence for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PhoneNumber:
    """A valid number in E.164 with what the policy needs to know about it."""

    e164: str
    country: str  # ISO 3166-1 alpha-2, e.g. "US"
    number_type: int

    @property
    def prefix(self) -> str:
        """The number without its last digits: the unit of the per-prefix send limit."""
        return self.e164[:-PREFIX_STRIPPED_DIGITS]

    @property
    def is_fixed_line(self) -> bool:
        return self.number_type == PhoneNumberType.FIXED_LINE


def parse(raw: object, country_hint: object = None) -> PhoneNumber:
    """Parse a caller-supplied number; national formats need an ISO `country_hint`.

    Raises NumberRefused("invalid_number", …) for anything that is not a valid number.
    """
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        raise NumberRefused("invalid_number", "a phone number must be a non-empty string")
    hint = None
    if country_hint is not None:
        if not isinstance(country_hint, str) or country_hint.upper() not in (
            phonenumbers.SUPPORTED_REGIONS
        ):
            raise NumberRefused("invalid_country", "country must be an ISO 3166 code like 'US'")
        hint = country_hint.upper()
    try:
        number = phonenumbers.parse(raw, hint)
    except phonenumbers.NumberParseException:
        detail = "not a phone number"
        if hint is None and _plus_became_space(raw):
            detail += (
                ": it starts with a space where '+' belongs, which is what a '+' becomes in a "
                "form-encoded body; send the '+' as %2B (curl --data-urlencode does), or send JSON"
            )
        elif hint is None and not raw.strip().startswith("+"):
            detail += " (use E.164 like +14155550100, or give 'country' for a national number)"
        raise NumberRefused("invalid_number", detail) from None
    if not phonenumbers.is_valid_number(number):
        raise NumberRefused("invalid_number", "not a valid phone number")
    return PhoneNumber(
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        country=phonenumbers.region_code_for_number(number) or "ZZ",
        number_type=phonenumbers.number_type(number),
    )


def _plus_became_space(raw: str) -> bool:
    """True for " 14155550100": E.164 whose '+' a form decoder read as a space."""
    return raw[:1] == " " and raw.lstrip(" ")[:1].isdigit()


def parse_caller_id(raw: object) -> PhoneNumber | None:
    """A caller ID Twilio gave us (`From`, `To`); None when withheld, a SIP address or garbage."""
    try:
        return parse(raw, None)
    except NumberRefused:
        return None


# E.164's shape: "+", a calling code that does not start with 0, at most 15 digits in all.
_E164_SHAPE = re.compile(r"\+[1-9][0-9]{6,14}")


def e164_shaped(raw: object) -> str | None:
    """`raw` when it has E.164's shape, else None, without the cost of validating it (~40 µs
    a caller ID): Twilio sends From and To in E.164 already, and a number is found on file
    only when its string equals a stored one, which was validated when it was stored."""
    return raw if isinstance(raw, str) and _E164_SHAPE.fullmatch(raw) else None


def masked(e164: str) -> str:
    """A number fit for logs: calling code and first digits, last four hidden (it is personal
    data, and the sid already identifies the verification)."""
    return e164[:-4] + "****" if len(e164) > 8 else "****"


def country_of_caller(raw: object) -> str | None:
    """The country a caller ID belongs to (its calling code's main country), without the cost
    of validating it: enough to pick a language. None when withheld or not a number."""
    if not isinstance(raw, str) or not raw.startswith("+") or len(raw) > 20:
        return None
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_country_code(number.country_code)
    return None if region == "ZZ" else region


@dataclass(frozen=True)
class NumberPolicy:
    """Which numbers we send codes to: allowed countries, no costly or unreachable types."""

    allowed_countries: Collection[str]

    def check(self, number: PhoneNumber, channel: str) -> PhoneNumber:
        """Return `number` if we may send to it on `channel`, else raise NumberRefused."""
        if "*" not in self.allowed_countries and number.country not in self.allowed_countries:
            raise NumberRefused(
                "country_not_allowed",
                f"numbers in {number.country} are not enabled (ALLOWED_COUNTRIES)",
            )
        refused = REFUSED_TYPES.get(number.number_type)
        if refused:
            raise NumberRefused("number_type_refused", refused)
        if channel == "sms" and number.is_fixed_line:
            raise NumberRefused(
                "channel_unsupported", "this is a landline, which cannot receive SMS: use 'call'"
            )
        return number
