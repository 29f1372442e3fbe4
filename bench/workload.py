"""The state the benchmark needs, made through the real API, and the requests it replays.

Every webhook request is signed as Twilio signs it, for the URL of the server it goes to, so
our app does its full signature check and the baseline receives byte-for-byte the same sizes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator

from bench.loadgen import RequestFeed, encode_form_post, encode_post, fetch_all

# 555-0100..0199 is the fictional range of every North American area code, valid to
# phonenumbers; each area code gives 100 distinct numbers.
AREA_CODES = (
    "415",
    "212",
    "312",
    "617",
    "206",
    "303",
    "512",
    "404",
    "305",
    "702",
    "213",
    "646",
    "718",
    "202",
    "503",
    "612",
    "713",
    "214",
    "602",
    "619",
    "801",
    "916",
    "407",
    "614",
)
CALLER_ID = "+15005550006"  # the app's simulated caller id
ACCOUNT_SID = "AC" + "0" * 32
REVEALS_PER_CALL = 4  # CodePolicy.max_reveals_per_call: later reveals hear "no longer available"
WRONG_CODE = "000000"
_OUTBOX_PAGE = 50  # GET /v1/simulator/outbox shows the newest 50 entries


@dataclass(frozen=True)
class Target:
    """Where one server listens, and the tokens its requests carry."""

    host: str
    port: int
    webhook_token: str
    api_token: str

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class CodeCall:
    """A simulated verification call: its verification, the CallSid the carrier gave it, and
    the path of the URL the call was told to fetch on answer (/voice/code/<sid>/<locale>/)."""

    sid: str
    call_sid: str
    to: str
    answer_path: str


@dataclass(frozen=True)
class State:
    calls: list[CodeCall]  # for the answer, reveal and status webhooks (stay pending)
    check_sids: list[str]  # worn out by the check endpoint, kept apart from `calls`


class SetupError(RuntimeError):
    """The app refused to create the benchmark's state."""


def test_numbers(count: int) -> list[str]:
    """`count` distinct valid US numbers in the fictional 555-01XX range."""
    numbers = [f"+1{area}5550{line}" for area in AREA_CODES for line in range(100, 200)]
    if count > len(numbers):
        raise ValueError(f"at most {len(numbers)} test numbers, {count} asked for")
    return numbers[:count]


def _api_post(target: Target, path: str, payload: dict[str, str]) -> bytes:
    headers = {"Authorization": f"Bearer {target.api_token}"}
    body = json.dumps(payload).encode()
    return encode_post(target.host, target.port, path, body, "application/json", headers)


def _api_get(target: Target, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Authorization: Bearer {target.api_token}\r\n\r\n"
    ).encode("latin-1")


def _start_verifications(target: Target, numbers: Sequence[str], connections: int) -> list[str]:
    """POST /v1/verifications (channel call) for each number; the sids, in order."""
    requests = [
        _api_post(target, "/v1/verifications", {"to": n, "channel": "call"}) for n in numbers
    ]
    sids = []
    for number, response in zip(
        numbers, fetch_all(target.host, target.port, requests, connections=connections), strict=True
    ):
        if response.status != 201:
            raise SetupError(f"start {number}: HTTP {response.status} {response.body[:300]!r}")
        sids.append(json.loads(response.body)["sid"])
    return sids


def _outbox_calls(target: Target) -> dict[str, tuple[str, str]]:
    """verification sid -> (CallSid, answer path), for the calls in the simulator's outbox
    (newest 50)."""
    [response] = fetch_all(
        target.host, target.port, [_api_get(target, "/v1/simulator/outbox")], connections=1
    )
    if response.status != 200:
        raise SetupError(f"outbox: HTTP {response.status} {response.body[:300]!r}")
    calls = {}
    for item in json.loads(response.body)["items"]:
        if item["kind"] == "call":
            # The answer URL names the verification: /voice/code/<sid>/<locale>/.
            path = urlsplit(item["url"]).path
            sid = path.split("/")[3]
            calls.setdefault(sid, (item["sid"], path))  # newest first: keep the latest call
    return calls


def prepare_state(
    target: Target,
    *,
    call_numbers: int,
    sends_per_number: int,
    check_numbers: int,
    connections: int,
) -> State:
    """Create the verifications the webhooks and the check endpoint will be pointed at.

    Each of `call_numbers` numbers gets `sends_per_number` calls (a re-send adds a call to the
    same verification), each call may hear its code REVEALS_PER_CALL times. CallSids are read
    from the simulator's outbox, as a test handset would, a page of sends at a time.
    """
    numbers = test_numbers(call_numbers + check_numbers)
    calls: list[CodeCall] = []
    for _ in range(sends_per_number):
        for start in range(0, call_numbers, _OUTBOX_PAGE):
            page = numbers[start : min(start + _OUTBOX_PAGE, call_numbers)]
            sids = _start_verifications(target, page, connections)
            placed = _outbox_calls(target)
            for number, sid in zip(page, sids, strict=True):
                if sid not in placed:
                    raise SetupError(f"no simulated call in the outbox for {sid}")
                call_sid, answer_path = placed[sid]
                calls.append(CodeCall(sid, call_sid, number, answer_path))
    check_sids = _start_verifications(target, numbers[call_numbers:], connections)
    return State(calls, check_sids)


# -- the requests replayed under load -----------------------------------------------------------


def _signed_form(target: Target, path: str, form: dict[str, str]) -> bytes:
    validator = RequestValidator(target.webhook_token)
    signature = validator.compute_signature(target.base_url + path, form)
    headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
    return encode_form_post(target.host, target.port, path, form, headers)


def twilio_voice_form(
    call_sid: str, from_: str, to: str, status: str, direction: str
) -> dict[str, str]:
    """The parameters Twilio really posts to a voice webhook: ids, numbers and their places.

    Using all of them makes parsing and signature checks cost what they cost in production.
    """
    place = {"City": "SAN FRANCISCO", "Country": "US", "State": "CA", "Zip": "94105"}
    form = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": status,
        "Direction": direction,
        "From": from_,
        "To": to,
        "Caller": from_,
        "Called": to,
        "CallToken": "",
        "StirVerstat": "TN-Validation-Passed-A",
    }
    for who in ("From", "To", "Caller", "Called"):
        form |= {f"{who}{field}": value for field, value in place.items()}
    return form


def _call_form(call: CodeCall, status: str) -> dict[str, str]:
    return twilio_voice_form(call.call_sid, CALLER_ID, call.to, status, "outbound-api")


def incoming_requests(target: Target) -> list[bytes]:
    """Calls to our number from a spread of callers (one request per caller)."""
    requests = []
    for caller in test_numbers(64):
        form = twilio_voice_form(
            "CA" + secrets.token_hex(16), caller, CALLER_ID, "ringing", "inbound"
        )
        requests.append(_signed_form(target, "/voice/incoming", form))
    return requests


def answer_requests(target: Target, state: State) -> list[bytes]:
    """Each verification call being answered."""
    return [_signed_form(target, c.answer_path, _call_form(c, "in-progress")) for c in state.calls]


def reveal_requests(target: Target, state: State) -> list[bytes]:
    """A key pressed on each call; the feed cycles, so call k hears its code again after
    every other call had its turn (REVEALS_PER_CALL times each before the cap)."""
    requests = []
    for call in state.calls:
        form = _call_form(call, "in-progress") | {"Digits": "5"}
        requests.append(_signed_form(target, call.answer_path + "reveal", form))
    return requests


def status_requests(target: Target, state: State) -> list[bytes]:
    """A 'ringing' progress callback for each call."""
    return [
        _signed_form(target, f"/voice/status/{c.sid}", _call_form(c, "ringing"))
        for c in state.calls
    ]


def check_requests(target: Target, state: State) -> list[bytes]:
    """A wrong code for each check verification, round-robin."""
    return [
        _api_post(target, "/v1/verifications/check", {"sid": sid, "code": WRONG_CODE})
        for sid in state.check_sids
    ]


@dataclass(frozen=True)
class Endpoint:
    """One measured endpoint: how to build its requests, what success looks like."""

    name: str
    build: Callable[[Target, State], list[bytes]]
    ok_status: int  # what our app answers when all is well (the baseline always says 200)
    compare: bool  # measured against the baseline too, with targets
    marker: bytes | None = None  # counted in response bodies (e.g. "the code was read")
    server: str = "ours"  # who answers in the "ours" column; "reference" has no target

    @property
    def is_reference(self) -> bool:
        return self.server != "ours"

    def feed(self, target: Target, state: State) -> RequestFeed:
        return RequestFeed(self.build(target, state))


ENDPOINTS = (
    Endpoint("/voice/incoming", lambda t, _s: incoming_requests(t), 200, compare=True),
    Endpoint("/voice/code/<sid>/<locale>/", answer_requests, 200, compare=True),
    # Only a reading of the code offers to repeat it (a <Gather>); the cap's answer does not.
    Endpoint(
        "/voice/code/<sid>/<locale>/reveal", reveal_requests, 200, compare=True, marker=b"<Gather"
    ),
    Endpoint("/voice/status/<sid>", status_requests, 204, compare=True),
    Endpoint("/v1/verifications/check", check_requests, 200, compare=False),
    # Not ours: bare Flask plus one Redis read, fed the /voice/incoming requests. The most a
    # webhook that must touch Redis could reach here (bench/baseline_app.py).
    Endpoint(
        "(bare Flask + 1 Redis read)",
        lambda t, _s: incoming_requests(t),
        200,
        compare=True,
        server="reference",
    ),
)
