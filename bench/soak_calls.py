"""The soak's callers: each simulated inbound call is a coroutine that listens, waits a human
pause, presses keys and POSTs the webhook its last TwiML named, signed as Twilio signs it.

What a caller does is read from the TwiML (the <Gather action=…>, its finishOnKey, a
<Redirect>), never from URLs of our own making: only the first one, PUBLIC_BASE_URL +
/voice/incoming, is what an operator types into Twilio's console. What the caller expects to
hear is the shipped default flow (flows/default.yaml), checked against the prompt texts in the
project's catalogs, so an edited prompt still passes and a wrong branch does not.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from twilio.request_validator import RequestValidator

from bench.loadgen import NETWORK_ERRORS, Connection, encode_form_post
from bench.workload import CALLER_ID, new_call_sid, twilio_voice_form
from ivr.prompts import PromptCatalogs
from ivr.telephony import SimulatedCarrier

OUR_NUMBER = CALLER_ID  # the number the callers dial; the default flow answers any number
LOCALE = "en-US"
CODE = "<code>"  # stands for the code the SMS carried, in the steps below
_MAX_REDIRECTS = 5
# Dropped before gunicorn's keepalive (5 s) closes it under a request in flight.
_IDLE_SECONDS = 4.0
_CODE_IN_SMS = re.compile(r"\b([0-9]{6,10})\b")  # OTP_LENGTH is 6 to 10
_OUTBOX_FIRST_LOOK = 20  # entries opened first; the whole outbox (200) only on a miss
_OUTBOX_SIZE = 200


@dataclass(frozen=True)
class Step:
    """One webhook of the default flow's account-help path: what the caller must hear in its
    answer (prompt keys), whether it must ask for keys (a <Gather>) or hand the call over
    (an <Enqueue>), and what the caller presses next."""

    name: str
    hears: tuple[str, ...]
    asks: bool
    press: str | None = None  # None: the call is over
    ends_with: str | None = None  # the verb that hands over, when `asks` is False


# Answer -> language (1: English) -> main menu (1: account help) -> caller ID identifies the
# customer, a code goes by SMS to the phone on file -> the code typed -> an agent's queue.
STEPS = (
    Step("incoming", ("flow.welcome", "flow.language.option"), asks=True, press="1"),
    Step("language", ("flow.main_menu.long",), asks=True, press="1"),
    Step("menu", ("flow.auth.sent_sms",), asks=True, press=CODE),
    Step("code", ("flow.auth.verified", "flow.agent.connecting"), asks=False, ends_with="Enqueue"),
)


class CallFailed(Exception):
    """A call met something other than the expected next step; `reason` groups it."""

    def __init__(self, step: str, reason: str, detail: str = ""):
        super().__init__(f"{step}: {reason}" + (f" ({detail})" if detail else ""))
        self.step, self.reason, self.detail = step, reason, detail


@dataclass(frozen=True)
class Customer:
    id: str
    phone: str  # E.164, distinct per customer: the caller ID the flow identifies


@dataclass
class Tally:
    """What every call did: per-request latencies by step, outcomes and errors."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0  # still going when the drain deadline passed
    # (seconds since the soak began, step, latency in seconds), for each answered request
    requests: list[tuple[float, str, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few failures, as text
    active: int = 0

    def fail(self, failure: CallFailed) -> None:
        self.failed += 1
        self.errors[f"{failure.step}: {failure.reason}"] += 1
        if len(self.examples) < 10:
            self.examples.append(str(failure)[:500])


class ConnectionPool:
    """Keep-alive connections shared by every call, as Twilio's webhook senders reuse theirs:
    one per request in flight, reused newest first, so the pool grows to the concurrency
    the server sees rather than to the number of calls (1,000 idle sockets would measure
    gunicorn's poller, not our webhooks). With `reuse` False every request has a connection
    of its own, so each one is a fresh race between gunicorn's workers to accept it."""

    def __init__(self, host: str, port: int, *, reuse: bool = True):
        self.host, self.port = host, port
        self.reuse = reuse
        self._idle: list[tuple[Connection, float]] = []
        self.opened = 0

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        connection = self._take()
        status, body = await connection.exchange(request)  # closes itself on failure
        if self.reuse:
            self._idle.append((connection, time.monotonic()))
        else:
            connection.close()
        return status, body

    def _take(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if now - since < _IDLE_SECONDS:
                return connection
            connection.close()
        self.opened += 1
        return Connection(self.host, self.port)

    def close(self) -> None:
        for connection, _ in self._idle:
            connection.close()
        self._idle.clear()


@dataclass(frozen=True)
class Heard:
    """A TwiML answer, read as Twilio reads it: what is said, then what happens next."""

    spoken: str
    action: str | None  # the first <Gather>'s action, resolved against the document's URL
    finish_on_key: str
    redirect: str | None
    verbs: tuple[str, ...]


def read_twiml(body: bytes, url: str) -> Heard:
    """Parse one answer; ValueError when it is not a TwiML <Response>."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - our own app's answer, on loopback
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"root is <{root.tag}>, not <Response>")
    spoken = " ".join(" ".join(say.itertext()) for say in root.iter("Say"))
    gather = root.find("Gather")
    redirect = root.find("Redirect")
    return Heard(
        spoken=" ".join(spoken.split()),
        action=urljoin(url, gather.get("action", "")) if gather is not None else None,
        finish_on_key=gather.get("finishOnKey", "#") if gather is not None else "",
        redirect=urljoin(url, (redirect.text or "").strip()) if redirect is not None else None,
        verbs=tuple(verb.tag for verb in root),
    )


class Caller:
    """Places the soak's calls against one server, signing every webhook with `auth_token`."""

    def __init__(
        self,
        *,
        base_url: str,
        auth_token: str,
        carrier: SimulatedCarrier,
        prompts: PromptCatalogs,
        app_name: str,
        pause: tuple[float, float],
        tally: Tally,
        clock_zero: float,
        reuse_connections: bool = True,
    ):
        parts = urlsplit(base_url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"{base_url}: a host and a port, e.g. http://127.0.0.1:5000")
        self.base_url = base_url.rstrip("/")
        self._origin = parts.netloc
        self._pool = ConnectionPool(parts.hostname, parts.port, reuse=reuse_connections)
        self._validator = RequestValidator(auth_token)
        self._carrier = carrier
        self._prompts = prompts
        self._app_name = app_name
        self._pause = pause
        self._tally = tally
        self._zero = clock_zero

    async def pause(self, rng: random.Random) -> None:
        """A human pause: listening to the prompt, then finding the key."""
        await asyncio.sleep(rng.uniform(*self._pause))

    @property
    def connections_opened(self) -> int:
        return self._pool.opened

    def close(self) -> None:
        self._pool.close()

    async def call(self, customer: Customer, rng: random.Random) -> bool:
        """One whole call, counted in the tally; True when it completed (a failure is
        counted, never raised)."""
        tally = self._tally
        tally.started += 1
        tally.active += 1
        try:
            await self._walk(customer, rng)
        except CallFailed as failure:
            tally.fail(failure)
            return False
        except asyncio.CancelledError:
            tally.unfinished += 1
            raise
        else:
            tally.completed += 1
            return True
        finally:
            tally.active -= 1

    async def _walk(self, customer: Customer, rng: random.Random) -> None:
        call_sid = new_call_sid()
        ringing = twilio_voice_form(call_sid, customer.phone, OUR_NUMBER, "ringing", "inbound")
        in_progress = ringing | {"CallStatus": "in-progress"}
        url, form = f"{self.base_url}/voice/incoming", ringing
        for step in STEPS:
            sent_ms = int(time.time() * 1000)
            heard = await self._post(step.name, url, form)
            self._expect(step, heard, customer)
            if step.press is None:
                return
            assert heard.action is not None  # _expect saw the Gather
            keys = step.press
            if keys == CODE:
                keys = await self._code_sent_to(customer.phone, sent_ms, step.name)
            await self.pause(rng)
            # Twilio posts the keys without the finishing key (the simulator does the same).
            url, form = heard.action, in_progress | {"Digits": keys}

    async def _post(self, step: str, url: str, form: dict[str, str]) -> Heard:
        """POST one signed webhook (following <Redirect>s, as Twilio does); what it said."""
        for _ in range(_MAX_REDIRECTS):
            parts = urlsplit(url)
            if parts.netloc != self._origin:
                raise CallFailed(step, "TwiML points elsewhere", url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            headers = {
                "X-Twilio-Signature": self._validator.compute_signature(url, form),
                "User-Agent": "TwilioProxy/1.1",
            }
            request = encode_form_post(self._pool.host, self._pool.port, path, form, headers)
            sent = time.perf_counter()
            try:
                status, body = await self._pool.exchange(request)
            except NETWORK_ERRORS as exc:
                raise CallFailed(step, f"network: {type(exc).__name__}", str(exc)) from None
            answered = time.perf_counter()
            self._tally.requests.append((answered - self._zero, step, answered - sent))
            if not 200 <= status < 300:
                raise CallFailed(step, f"HTTP {status}", body[:200].decode("utf-8", "replace"))
            try:
                heard = read_twiml(body, url)
            except ValueError as exc:
                raise CallFailed(step, "not TwiML", str(exc)) from None
            if heard.redirect is None or heard.action is not None:
                return heard
            url = heard.redirect
        raise CallFailed(step, "too many redirects")

    def _expect(self, step: Step, heard: Heard, customer: Customer) -> None:
        """The answer is the expected next step of the flow, and apologizes for nothing."""
        if "sorry" in heard.spoken.lower():
            raise CallFailed(step.name, "apology", heard.spoken[:200])
        values = {"app_name": self._app_name, "digit": "1", "ending": " ".join(customer.phone[-2:])}
        for key in step.hears:
            text = " ".join(self._prompts.text(LOCALE, key, **values).split())
            if text not in heard.spoken:
                raise CallFailed(step.name, f"did not hear {key}", heard.spoken[:200])
        if step.asks and heard.action is None:
            raise CallFailed(step.name, "no <Gather>", ",".join(heard.verbs))
        if not step.asks and (heard.action is not None or step.ends_with not in heard.verbs):
            raise CallFailed(step.name, f"no <{step.ends_with}>", ",".join(heard.verbs))

    async def _code_sent_to(self, phone: str, since_ms: int, step: str) -> str:
        """The code of the SMS the simulated carrier sent to `phone` since `since_ms`, read
        as the handset reads it: the carrier's own outbox reader, which opens the sealed
        bodies (Redis holds no plaintext code)."""
        for limit in (_OUTBOX_FIRST_LOOK, _OUTBOX_SIZE):
            entries = await asyncio.to_thread(self._carrier.outbox, limit)
            body = _newest_sms(entries, phone, since_ms)
            if body is not None:
                found = _CODE_IN_SMS.search(body)
                if found is None:
                    raise CallFailed(step, "SMS without a code")
                return found.group(1)
        raise CallFailed(step, "no SMS in the simulator's outbox")


def _newest_sms(entries: list[dict[str, object]], phone: str, since_ms: int) -> str | None:
    """The body of the newest SMS to `phone` sent at or after `since_ms` (newest first)."""
    for entry in entries:
        created = entry.get("created_at")
        if (
            entry.get("kind") == "sms"
            and entry.get("to") == phone
            and isinstance(created, int)
            and created >= since_ms
            and isinstance(entry.get("body"), str)
        ):
            return str(entry["body"])
    return None


async def run_slot(
    caller: Caller,
    customer: Customer,
    rng: random.Random,
    *,
    start_in: float,
    stop_starting_at: float,
) -> None:
    """One line of the soak: call after call from one customer (so one call per phone at a
    time, and its SMS is unambiguous) until `stop_starting_at` (monotonic)."""
    await asyncio.sleep(start_in)
    while time.monotonic() < stop_starting_at:
        if not await caller.call(customer, rng):
            await caller.pause(rng)  # a caller who met an error rings again, a little later
