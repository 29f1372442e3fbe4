"""The state the benchmark needs, made through the real API, and the requests it replays.

Every webhook request is signed as Twilio signs it, for the URL of the server it goes to, so
our app does its full signature check and the baseline receives byte-for-byte the same sizes.
"""

from __future__ import annotations

import base64
import functools
import hmac
import html
import json
import math
import re
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import phonenumbers
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

# The default flow (flows/default.yaml): an answer says the welcome, then asks for a language at
# step 1; 1 picks English and goes to the main menu; there 9 ("hear these options again") goes
# back to the menu, which asks anew with its long greeting and bumps the step. A repeated
# request (Twilio asking again for a call already answered, a replayed step) changes nothing
# and repeats the current question: no welcome, and the menu's short greeting. These markers
# tell the two apart in the answers; prepare_state checks that they still do.
ENGLISH = "1"
MENU_AGAIN = "9"
INCOMING_MARKER = b"Thank you for calling"  # flow.welcome (en-US), said on a new call only
MENU_MARKER = b"To hear these options again"  # flow.main_menu.long (en-US), not the short one
# Where a server keeps none of the benchmark's state (the baseline, the reference), a stateful
# feed is this many of the same requests, cycling: same sizes, no need for thousands.
SAMPLE_REQUESTS = 1024


@dataclass(frozen=True)
class Target:
    """Where one server listens, and the tokens its requests carry. `keeps_state`: our app,
    which holds the benchmark's state, so its stateful feeds must not repeat a request."""

    host: str
    port: int
    webhook_token: str
    api_token: str
    keeps_state: bool = False

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
class FlowCall:
    """An inbound call answered by the default flow, waiting for its language at step 1, and
    the path (query included: the sealed state) its answer's <Gather> sends the keys to."""

    call_sid: str
    caller: str
    first_step: str = "/voice/flow/1"


@dataclass(frozen=True)
class State:
    calls: list[CodeCall]  # for the answer, reveal and status webhooks (stay pending)
    check_sids: list[str]  # worn out by the check endpoint, kept apart from `calls`
    incoming_calls: int  # distinct CallSids the /voice/incoming feed brings to our app
    flow_calls: list[FlowCall]  # for the menu steps, each taking `menu_steps` of them
    menu_steps: int


class SetupError(RuntimeError):
    """The app refused to create the benchmark's state."""


@functools.cache
def _all_test_numbers() -> tuple[str, ...]:
    """The fictional 555-01XX range of AREA_CODES first, then of every other geographic area
    code of the US (phonenumbers: a fixed line or mobile; a long run needs more than 2,400)."""
    geographic = {
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    }
    parsed = {area: phonenumbers.parse(f"+1{area}5550100") for area in range(201, 990)}
    more = [
        str(area)
        for area, number in parsed.items()
        if str(area) not in AREA_CODES
        and phonenumbers.region_code_for_number(number) == "US"
        and phonenumbers.number_type(number) in geographic
    ]
    return tuple(f"+1{area}5550{line}" for area in (*AREA_CODES, *more) for line in range(100, 200))


def test_numbers(count: int) -> list[str]:
    """`count` distinct valid US numbers in the fictional 555-01XX range."""
    numbers = _all_test_numbers()
    if count > len(numbers):
        raise ValueError(f"at most {len(numbers)} test numbers, {count} asked for")
    return list(numbers[:count])


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


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def _webhook(target: Target, path: str, form: dict[str, str], what: str) -> bytes:
    """One signed webhook sent to `target`; its body, SetupError unless HTTP 200."""
    [response] = fetch_all(
        target.host, target.port, [_signed_form(target, path, form)], connections=1
    )
    if response.status != 200:
        raise SetupError(f"{what}: HTTP {response.status} {response.body[:300]!r}")
    return response.body


def _check_flow_markers(target: Target) -> None:
    """Walk one call through the default flow to make sure the markers still tell a new call
    from Twilio asking again, and a real menu step from a replayed one (a flow or prompt edit
    would otherwise make the notes count wrong)."""
    caller = test_numbers(1)[0]
    call = FlowCall(new_call_sid(), caller)
    expectations = (  # path, Digits, marker, whether the answer has it, what it is
        ("/voice/incoming", None, INCOMING_MARKER, True, "a new call"),
        ("/voice/incoming", None, INCOMING_MARKER, False, "Twilio asking again"),
        ("/voice/flow/1", ENGLISH, MENU_MARKER, True, "English chosen at step 1"),
        ("/voice/flow/1", ENGLISH, MENU_MARKER, False, "step 1 replayed"),
        ("/voice/flow/2", MENU_AGAIN, MENU_MARKER, True, f"{MENU_AGAIN} at the menu, step 2"),
    )
    for path, digits, marker, expected, what in expectations:
        body = _webhook(target, path, _flow_form(call, digits), f"default flow, {what}")
        if b"<Gather" not in body or (marker in body) != expected:
            raise SetupError(
                f"default flow, {what}: the answer {'lacks' if expected else 'has'} "
                f"{marker!r} (bench/workload.py expects flows/default.yaml and its en-US "
                f"prompts as they were): {body[:600]!r}"
            )


def _answer_flow_calls(target: Target, count: int, connections: int) -> list[FlowCall]:
    """`count` calls answered by the default flow through /voice/incoming, each now waiting
    for its language at step 1."""
    callers = test_numbers(len(AREA_CODES) * 100)
    calls = [FlowCall(new_call_sid(), callers[i % len(callers)]) for i in range(count)]
    requests = [_signed_form(target, "/voice/incoming", _flow_form(c, None)) for c in calls]
    responses = fetch_all(target.host, target.port, requests, connections=connections)
    answered = []
    for call, response in zip(calls, responses, strict=True):
        step = gather_action(response.body)
        if response.status != 200 or INCOMING_MARKER not in response.body or step is None:
            raise SetupError(
                f"answer {call.call_sid}: HTTP {response.status} {response.body[:300]!r}"
            )
        if not step.startswith("/voice/flow/1?s="):
            raise SetupError(f"answer {call.call_sid}: step 1 carries no sealed state: {step}")
        answered.append(FlowCall(call.call_sid, call.caller, step))
    return answered


_ACTION = re.compile(rb'<Gather [^>]*action="([^"]+)"')


def gather_action(body: bytes) -> str | None:
    """The path (and query) of the first <Gather>'s action in a TwiML answer, if it has one."""
    found = _ACTION.search(body)
    if found is None:
        return None
    parts = urlsplit(html.unescape(found.group(1).decode()))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def prepare_state(
    target: Target,
    *,
    call_numbers: int,
    sends_per_number: int,
    check_numbers: int,
    menu_calls: int,
    requests_per_feed: int,
    connections: int,
) -> State:
    """Create the verifications the webhooks and the check endpoint will be pointed at, and
    the inbound calls the menu steps will be pointed at.

    Each of `call_numbers` numbers gets `sends_per_number` calls (a re-send adds a call to the
    same verification), each call may hear its code REVEALS_PER_CALL times. CallSids are read
    from the simulator's outbox, as a test handset would, a page of sends at a time.

    `requests_per_feed`: the most requests one server may be sent from one stateful feed over
    the whole run; /voice/incoming gets that many CallSids, and the `menu_calls` calls enough
    steps each, so that neither repeats a request.
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
    _check_flow_markers(target)
    flow_calls = _answer_flow_calls(target, menu_calls, connections)
    return State(
        calls,
        check_sids,
        incoming_calls=requests_per_feed,
        flow_calls=flow_calls,
        menu_steps=math.ceil(requests_per_feed / menu_calls),
    )


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


def _flow_form(call: FlowCall, digits: str | None) -> dict[str, str]:
    """An inbound call to our number: ringing when answered, in progress at its steps."""
    if digits is None:
        return twilio_voice_form(call.call_sid, call.caller, CALLER_ID, "ringing", "inbound")
    form = twilio_voice_form(call.call_sid, call.caller, CALLER_ID, "in-progress", "inbound")
    return form | {"Digits": digits}


def incoming_requests(target: Target, state: State) -> list[bytes]:
    """New calls to our number from a spread of callers, each with a CallSid of its own: a
    CallSid seen before would not start a call but repeat its question ("Twilio asked
    again"). Enough of them for the whole run on our app (state.incoming_calls), a sample
    elsewhere."""
    count = state.incoming_calls if target.keeps_state else SAMPLE_REQUESTS
    callers = test_numbers(len(AREA_CODES) * 100)
    return [
        _signed_form(
            target,
            "/voice/incoming",
            _flow_form(FlowCall(new_call_sid(), callers[i % len(callers)]), None),
        )
        for i in range(count)
    ]


def menu_requests(target: Target, state: State) -> list[bytes]:
    """A sample of menu steps, for servers that keep no flow state (the baseline): the same
    paths, sealed states and forms our app gets, so the same sizes."""
    turns = [(call, step) for step in range(1, state.menu_steps + 1) for call in state.flow_calls]
    turns = turns[:: max(1, len(turns) // SAMPLE_REQUESTS)]
    return [
        _signed_form(
            target, call.first_step, _flow_form(call, ENGLISH if step == 1 else MENU_AGAIN)
        )
        for call, step in turns
    ]


class MenuStepFeed(RequestFeed):
    """Our app's menu steps, sent as Twilio sends them: each to the URL the call's previous
    answer named in its <Gather> (with the state sealed in it). English at a call's first
    step, then "hear these options again", each a real menu turn (one compare-and-set save).
    Round-robin over the calls, so no two requests in flight are for one call; a call stops
    after `state.menu_steps` steps, or when an answer names no next step."""

    def __init__(self, target: Target, state: State):
        super().__init__([b""])  # the requests are built as the answers come
        self._target = target
        self._steps = state.menu_steps
        self._ready = deque((call, call.first_step, 1) for call in state.flow_calls)
        self._in_flight: dict[int, tuple[FlowCall, int, bytes]] = {}
        self._replayed = 0
        self._last = b""
        self._key = target.webhook_token.encode()
        self._forms: dict[tuple[str, str], tuple[bytes, str]] = {}

    def next(self) -> bytes:
        if not self._ready:  # every call used up: replay the last request (counted as wrapped)
            self._replayed += 1
            return self._last
        call, path, step = self._ready.popleft()
        request = self._signed(path, call, ENGLISH if step == 1 else MENU_AGAIN)
        self._in_flight[id(request)] = (call, step, request)
        self._last = request
        return request

    def _signed(self, path: str, call: FlowCall, digits: str) -> bytes:
        """`_signed_form`, in a fraction of the time (the load generator shares the server's
        cores): the form is encoded once per call and keys, and only the HMAC-SHA1 over the URL
        and the sorted name+value pairs (Twilio's signature, as RequestValidator computes it
        for single-valued forms) is made per request."""
        body, pairs = self._forms.get((call.call_sid, digits)) or self._encode(call, digits)
        digest = hmac.new(self._key, (self._target.base_url + path + pairs).encode(), "sha1")
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._target.host}:{self._target.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Twilio-Signature: {base64.b64encode(digest.digest()).decode()}\r\n"
            "User-Agent: TwilioProxy/1.1\r\n\r\n"
        )
        return head.encode("latin-1") + body

    def _encode(self, call: FlowCall, digits: str) -> tuple[bytes, str]:
        form = _flow_form(call, digits)
        encoded = urlencode(form).encode("ascii"), "".join(k + v for k, v in sorted(form.items()))
        self._forms[call.call_sid, digits] = encoded
        return encoded

    def answered(self, request: bytes, body: bytes) -> None:
        call, step, _ = self._in_flight.pop(id(request), (None, 0, b""))
        path = gather_action(body)
        if call is not None and path is not None and step < self._steps:
            self._ready.append((call, path, step + 1))

    @property
    def wrapped(self) -> int:
        return self._replayed


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
    """One measured endpoint of our app: how to build its requests, what success looks like."""

    name: str
    build: Callable[[Target, State], list[bytes]]
    ok_status: int  # what our app answers when all is well
    marker: bytes | None = None  # counted in response bodies (e.g. "the code was read")
    webhook: bool = True  # a Twilio webhook: held to the targets (the API check is not)

    def feed(self, target: Target, state: State) -> RequestFeed:
        if self.build is menu_requests and target.keeps_state:
            return MenuStepFeed(target, state)
        return RequestFeed(self.build(target, state))


@dataclass(frozen=True)
class Reference:
    """A peer that does less than our webhooks (bench/baseline_app.py), fed the
    /voice/incoming requests signed for it; every ratio is to one of these, in the same run."""

    key: str  # the ratio's name in the table and the JSON
    server: str  # the GunicornServer's name
    name: str  # its row in the table

    def feed(self, target: Target, state: State) -> RequestFeed:
        return RequestFeed(incoming_requests(target, state))


ENDPOINTS = (
    # Only a new call hears the welcome; a CallSid seen before would not (none should be).
    Endpoint("/voice/incoming", incoming_requests, 200, marker=INCOMING_MARKER),
    # Only a real step asks the menu anew (long greeting); a replay repeats it short.
    Endpoint("/voice/flow/<step> (menu)", menu_requests, 200, marker=MENU_MARKER),
    Endpoint("/voice/code/<sid>/<locale>/", answer_requests, 200),
    # The code call's key press. Only a reading of the code offers to repeat it (a <Gather>);
    # the cap's answer does not.
    Endpoint("/voice/code/<sid>/<locale>/reveal", reveal_requests, 200, marker=b"<Gather"),
    Endpoint("/voice/status/<sid>", status_requests, 204),
    Endpoint("/v1/verifications/check", check_requests, 200, webhook=False),
)
TUTORIAL = "tutorial"  # the peer the targets are ratios to
REFERENCES = (
    Reference("static", "baseline", "(bare Flask, static TwiML)"),
    Reference("signed_read", "reference", "(bare Flask + our signature check + 1 read)"),
    Reference(TUTORIAL, "tutorial", "(Twilio tutorial: validate + 1 read + TwiML)"),
)
