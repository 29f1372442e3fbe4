"""How far a caller ID may be trusted, from what Twilio tells us of its STIR/SHAKEN check.

Twilio sends `StirVerstat` on inbound calls that arrived with a SHAKEN identity header:
`TN-Validation-Passed-A` (the originating carrier knows the caller and their right to the
number), `-B` (knows the caller, not the number), `-C` (only where the call entered its
network), `TN-Validation-Failed-*` (the signature did not check out) or `No-TN-Validation`
(Twilio could not validate it). Calls from networks without STIR/SHAKEN carry none at all.
https://www.twilio.com/docs/voice/trusted-calling-with-shakenstir
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PASSED = re.compile(r"^TN-Validation-Passed-([ABC])$")
_RANK = {"A": 3, "B": 2, "C": 1}


@dataclass(frozen=True)
class CallerIdTrust:
    attestation: str  # "A", "B", "C"; "failed" (validation failed or refused); "none" (not sent)
    trusted: bool  # whether this caller ID may approve a missed-call verification


def assess(stir_verstat: str, min_attestation: str = "") -> CallerIdTrust:
    """Judge a caller ID by its `StirVerstat`. A failed or refused validation never approves;
    `min_attestation` ("A", "B", "C", or "" for any) also refuses lower levels, and a call
    that carried no attestation at all when a level is required."""
    verstat = stir_verstat.strip()
    if not verstat:
        return CallerIdTrust("none", trusted=not min_attestation)
    passed = _PASSED.fullmatch(verstat)
    if passed is None:  # TN-Validation-Failed-*, No-TN-Validation, anything unknown
        return CallerIdTrust("failed", trusted=False)
    level = passed.group(1)
    enough = not min_attestation or _RANK[level] >= _RANK[min_attestation]
    return CallerIdTrust(level, trusted=enough)
