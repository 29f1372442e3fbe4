"""`make bench`'s caller report: how long a caller listens and how many answers they give on the
main paths of the default flow, and how long from the key press to the end of the code's first
reading, per locale. All of it is computed from the TwiML the app serves, walked by the
project's own simulated phone (ivr.simulator) through signed webhooks, in-process.

Seconds of speech come from espeak-ng when it is installed (each <Say> synthesized in its
language at espeak-ng's default rate; the WAV's length), a stand-in for Twilio's voices, which
are not reachable here; without it, from the text's length at espeak-ng's en-US pace on these
prompts (CHARS_PER_SECOND, SECONDS_PER_DIGIT). SSML pauses inside a <Say> are added as the
TwiML gives them. A caller is assumed to wait for the end of each prompt before answering (no
barge-in), so these are the longest honest figures; the keys pressed are the answers given.

    python -m bench.caller_time            # prints the report
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ivr.config import DEFAULT_FLOWS_DIR
from ivr.customers import Customer
from ivr.prompts import READING_GAP
from ivr.simulator import CallTranscript, Heard

# Without espeak-ng, its en-US pace on our prompts: sentences at about 14.8 characters a
# second (the known caller's path: 30.6 s), a digit read alone 0.27 s ("Your verification
# code is 1 2 3 4 5 6": 3.32 s).
CHARS_PER_SECOND = 14.8
SECONDS_PER_DIGIT = 0.27
_ESPEAK_VOICES = {"en": "en-us", "es": "es", "fr": "fr-fr", "de": "de", "pt": "pt-br"}
KNOWN_CALLER = "+14155550161"
OTHER_PHONE = "+14155550162"  # the known customer's phone on file is the caller's own
UNKNOWN_CALLER = "+14155550163"
CUSTOMER_ID = "12345678"
CODE = "code"  # stands for the code the simulated carrier carried
WRONG = "wrong"  # a code that is not it


@dataclass(frozen=True)
class CallPath:
    """A way through the default flow: who calls, and what they answer."""

    name: str
    caller: str
    keys: tuple[str, ...]
    closed: bool = False  # the agents' hours say closed (today is made a holiday)


PATHS = (
    # Known: the caller ID is on file, with the customer's language (not asked): the menu's 1
    # (account help), then the code. Unknown: the language, the menu, the account number.
    CallPath("known caller (caller ID on file)", KNOWN_CALLER, ("1", CODE)),
    CallPath("unknown caller, account number", UNKNOWN_CALLER, ("1", "1", CUSTOMER_ID, CODE)),
    CallPath("known caller, one wrong code", KNOWN_CALLER, ("1", WRONG, CODE)),
    CallPath("known caller, agents closed", KNOWN_CALLER, ("1", CODE), closed=True),
)


class Speech:
    """Seconds a text takes to say: espeak-ng's WAV length, else an estimate by length."""

    def __init__(self) -> None:
        self.engine = "espeak-ng" if shutil.which("espeak-ng") else "an estimate (no espeak-ng)"
        self._cache: dict[tuple[str, str], float] = {}

    def seconds(self, text: str, language: str) -> float:
        key = (text, language)
        if key not in self._cache:
            self._cache[key] = self._measure(text, language)
        return self._cache[key]

    def _measure(self, text: str, language: str) -> float:
        if self.engine != "espeak-ng":
            digits = sum(character.isdigit() for character in text)
            words = len(text) - 2 * digits  # a digit and the space beside it
            return max(0, words) / CHARS_PER_SECOND + digits * SECONDS_PER_DIGIT
        voice = _ESPEAK_VOICES.get(language.split("-")[0].lower(), "en-us")
        with tempfile.NamedTemporaryFile(suffix=".wav") as out:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-w", out.name, text], check=True, capture_output=True
            )
            with wave.open(out.name) as audio:
                return audio.getnframes() / audio.getframerate()


def heard_seconds(event: Heard, speech: Speech) -> float:
    """How long one thing the caller hears lasts: speech and its SSML pauses; a <Pause>."""
    if event.kind == "say":
        pauses = int(event.attributes.get("pause_ms", "0")) / 1000
        return speech.seconds(event.text, event.attributes.get("language", "en-US")) + pauses
    if event.kind == "pause":
        return float(event.text or 1)
    return 0.0


def listening(transcript: CallTranscript, speech: Speech) -> tuple[float, int, str]:
    """Seconds of prompts until the call is handed over (or ends), answers given, and how
    it ended."""
    seconds, answers = 0.0, 0
    for event in transcript.events:
        if event.kind in ("enqueue", "dial", "hangup"):
            break
        if event.kind == "keys":
            answers += 1
        seconds += heard_seconds(event, speech)
    return round(seconds, 1), answers, transcript.ended_by


@contextmanager
def _flows(closed: bool) -> Iterator[Path]:
    """The shipped flows, or a copy whose agents' hours are closed today (a holiday)."""
    if not closed:
        yield DEFAULT_FLOWS_DIR
        return
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "flows"
        shutil.copytree(DEFAULT_FLOWS_DIR, copy)
        flow = copy / "default.yaml"
        today = dt.datetime.now(ZoneInfo("America/New_York")).date()  # the agents' clock
        text = flow.read_text().replace(
            "holidays: [2026-12-25, 2027-01-01]",
            f"holidays: [{today.isoformat()}, {(today + dt.timedelta(days=1)).isoformat()}]",
        )
        flow.write_text(text)
        yield copy


def _simulation(redis_url: str, flows: Path, instance: Path) -> Any:
    from ivr.app import create_app
    from ivr.flow_cli import FlowSimulation

    app = create_app(
        {
            "REDIS_URL": redis_url,
            "INSTANCE_PATH": str(instance),
            "FLOWS_DIR": str(flows),
            "SEND_LIMIT_PER_NUMBER": "1000/1h",
            "SEND_LIMIT_PER_PREFIX": "1000/1h",
            "TWILIO_ACCOUNT_SID": None,
            "TWILIO_AUTH_TOKEN": None,
            "LOG_LEVEL": "WARNING",  # each walked call would log its steps amid the report
        }
    )
    return FlowSimulation(app)


def _keys(simulation: Any, path: CallPath) -> Callable[[CallTranscript], str | None]:
    remaining = list(path.keys)

    def press(_: CallTranscript) -> str | None:
        if not remaining:
            return None
        key = remaining.pop(0)
        if key == CODE:
            return simulation.received_code(None)
        if key == WRONG:
            right = simulation.received_code(None)
            return "".join(str((int(digit) + 1) % 10) for digit in right)
        return key

    return press


def report(redis_url: str) -> dict[str, Any]:
    """The paths of the default flow and the time to the code per locale, as a document."""
    speech = Speech()
    found: dict[str, Any] = {"speech": speech.engine, "paths": [], "time_to_code": []}
    with tempfile.TemporaryDirectory() as folder:
        for path in PATHS:
            with _flows(path.closed) as flows:
                simulation = _simulation(redis_url, flows, Path(folder) / path.name[:12])
                simulation.ivr.redis.flushdb()
                # The record names the customer's language, as a bank's CRM does: a known
                # caller is not asked for it.
                simulation.ivr.customers.put(
                    Customer(CUSTOMER_ID, KNOWN_CALLER, "Ada", locale="en-US")
                )
                to = simulation.number_for(None, None)
                transcript = simulation.phone.call(
                    f"{simulation.base_url}/voice/incoming",
                    from_=path.caller,
                    to=to,
                    keys=_keys(simulation, path),
                )
                seconds, answers, ended = listening(transcript, speech)
                found["paths"].append(
                    {"path": path.name, "seconds": seconds, "answers": answers, "ends": ended}
                )
        simulation = _simulation(redis_url, DEFAULT_FLOWS_DIR, Path(folder) / "codes")
        for locale in simulation.ivr.prompts.locales:
            found["time_to_code"].append(_time_to_code(simulation, locale, speech))
        simulation.ivr.redis.flushdb()
    return found


def _time_to_code(simulation: Any, locale: str, speech: Speech) -> dict[str, Any]:
    """From the key press to the end of the first full reading of a 6-digit code: the first
    <Say> after the key, its pauses but the gap after the reading."""
    ivr = simulation.ivr
    verification = ivr.verifications.start(to=OTHER_PHONE, channel="call", locale=locale)
    transcript = simulation.phone.call(
        ivr.verifications.urls.call_answer(verification.sid, verification.locale),
        from_=ivr.settings.twilio_caller_id or KNOWN_CALLER,
        to=OTHER_PHONE,
        keys=["5"],
        call_sid=verification.send_attempts[-1].provider_sid,
        direction="outbound-api",
    )
    after = transcript.events[[e.kind for e in transcript.events].index("keys") + 1 :]
    reading = next(event for event in after if event.kind == "say")
    gap = float(READING_GAP.removesuffix("s"))
    seconds = heard_seconds(reading, speech) - (gap if "pause_ms" in reading.attributes else 0)
    return {"locale": locale, "seconds": round(seconds, 1), "text": reading.text}


def render(found: dict[str, Any]) -> list[str]:
    lines = [f"caller time (speech by {found['speech']}, no barge-in):"]
    for row in found["paths"]:
        lines.append(
            f"  {row['path']:<38} {row['seconds']:>5.1f} s of prompts, {row['answers']} answers"
            f" -> {row['ends']}"
        )
    lines.append("  time to the code (key press to the end of the first reading, 6 digits):")
    for row in found["time_to_code"]:
        lines.append(f"    {row['locale']:<6} {row['seconds']:>4.1f} s")
    return lines


def measure() -> dict[str, Any]:
    """The report, on an embedded Redis of its own (started and stopped here)."""
    from ivr.store import EmbeddedRedis

    with tempfile.TemporaryDirectory() as folder:
        embedded = EmbeddedRedis(Path(folder) / "redis")
        try:
            return report(embedded.ensure_running())
        finally:
            embedded.stop(force=True)


def main() -> int:
    for line in render(measure()):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
