"""A simulated phone: it walks a call through our own webhooks, signed as Twilio signs them,
and reports what the caller would hear and where the call ends.

It plays Twilio's part for the TwiML verbs a call can meet (Say, Play, Pause, Gather, Redirect,
Hangup, Reject, Enqueue, Dial) without a network: requests go to the app in-process. The
simulated carrier's handset (`/v1/simulator/calls/<sid>/answer`) uses it.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from flask import Flask
from twilio.request_validator import RequestValidator

MAX_WEBHOOK_REQUESTS = 60  # a flow that loops longer than this is reported, not followed
ACCOUNT_SID = "AC" + "0" * 32


@dataclass
class Heard:
    """One thing that happened on the call, in order."""

    kind: str  # say | play | pause | keys | timeout | hangup | reject | enqueue | dial | error
    text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.attributes}


@dataclass
class CallTranscript:
    call_sid: str
    events: list[Heard] = field(default_factory=list)
    ended_by: str = "hangup"

    @property
    def spoken(self) -> list[str]:
        """Everything said by text-to-speech, in order."""
        return [event.text for event in self.events if event.kind == "say"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "ended_by": self.ended_by,
            "events": [event.to_dict() for event in self.events],
        }


def _break_ms(duration: str) -> int:
    """An SSML <break time=…> in milliseconds ("350ms", "1s"); 0 when it says neither."""
    if duration.endswith("ms") and duration[:-2].isdigit():
        return int(duration[:-2])
    if duration.endswith("s") and duration[:-1].replace(".", "", 1).isdigit():
        return round(float(duration[:-1]) * 1000)
    return 0


def _spoken_text(element: ET.Element) -> str:
    """The words of a <Say>, SSML children included, with the spacing a listener hears."""
    return " ".join(" ".join(element.itertext()).split())


KeySource = Callable[["CallTranscript"], "str | None"]


def _next_keys(keys: list[str] | KeySource, transcript: CallTranscript) -> str | None:
    """The keys pressed at this Gather: the next of a list, or what a key source answers."""
    if callable(keys):
        return keys(transcript)
    return keys.pop(0) if keys else None


@dataclass
class Question:
    """A <Gather> waiting for the caller's keys, and where the document goes on without any."""

    url: str  # the document's URL: the action resolves against it
    body: str  # the TwiML document, to go on after the Gather when nothing is pressed
    index: int  # the Gather's place among the document's verbs
    action: str
    finish_on_key: str
    on_empty: bool  # actionOnEmptyResult: silence is posted too

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Progress:
    """What one step of an interactive call heard, and what it waits for now (if anything)."""

    events: list[Heard]
    question: Question | None = None
    ended_by: str | None = None


class PhoneSimulator:
    """Places requests against `app` exactly as Twilio would, signed with `auth_token`."""

    def __init__(self, app: Flask, auth_token: str):
        self.app = app
        self.validator = RequestValidator(auth_token)
        self.client = app.test_client()

    def post(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        """POST a signed webhook to an absolute URL of ours; (status, body)."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self.client.post(
            path,
            data=params,
            base_url=f"{parts.scheme}://{parts.netloc}",
            headers={"X-Twilio-Signature": self.validator.compute_signature(url, params)},
        )
        return response.status_code, response.get_data(as_text=True)

    def call(
        self,
        url: str,
        *,
        from_: str,
        to: str,
        keys: Iterable[str] | KeySource = (),
        call_sid: str | None = None,
        direction: str = "inbound",
        status_callback: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> CallTranscript:
        """Answer a call whose TwiML is at `url`, pressing `keys` at each Gather in turn (or
        asking `keys(transcript)` there, when it is a function: None means silence)."""
        sid = call_sid or "CA" + secrets.token_hex(16)
        base = {
            "CallSid": sid,
            "AccountSid": ACCOUNT_SID,
            "From": from_,
            "To": to,
            "Direction": direction,
            **(extra or {}),
        }
        transcript = CallTranscript(sid)
        pending_keys: list[str] | KeySource = keys if callable(keys) else list(keys)
        self._status(status_callback, base, "in-progress")
        progress = self.begin(url, {**base, "CallStatus": "in-progress"})
        for _ in range(MAX_WEBHOOK_REQUESTS):
            transcript.events += progress.events
            if progress.question is None:
                transcript.ended_by = progress.ended_by or "hangup"
                break
            pressed = _next_keys(pending_keys, transcript)
            progress = self.press(progress.question, base, pressed)
        else:
            transcript.ended_by = "loop"
        self._status(status_callback, base, "completed")
        return transcript

    # -- an interactive call: one step per key press (the console's simulator) ---------------

    def begin(self, url: str, params: dict[str, str]) -> Progress:
        """Answer a call whose TwiML is at `url`: what is heard up to the first question."""
        status, body = self.post(url, params)
        return self._follow(url, status, body, params, 0)

    def press(self, question: Question, params: dict[str, str], keys: str | None) -> Progress:
        """The caller's `keys` at `question` (None: silence until it times out)."""
        if keys:
            digits = keys.removesuffix(question.finish_on_key) if question.finish_on_key else keys
            action = urljoin(question.url, question.action)
            status, body = self.post(action, {**params, "Digits": digits})
            progress = self._follow(action, status, body, params, 0)
            progress.events.insert(0, Heard("keys", keys))
            return progress
        if question.on_empty:
            action = urljoin(question.url, question.action)
            status, body = self.post(action, {**params, "Digits": ""})
            progress = self._follow(action, status, body, params, 0)
        else:  # Twilio goes on with the verbs after the Gather
            progress = self._follow(question.url, 200, question.body, params, question.index + 1)
        progress.events.insert(0, Heard("timeout"))
        return progress

    def _follow(
        self, url: str, status: int, body: str, params: dict[str, str], start: int
    ) -> Progress:
        events: list[Heard] = []
        for _ in range(MAX_WEBHOOK_REQUESTS):
            if status != 200:
                events.append(Heard("error", f"HTTP {status}: {body[:200]}"))
                return Progress(events, ended_by="error")
            try:
                verbs = list(ET.fromstring(body))  # noqa: S314 - our own app's TwiML
            except ET.ParseError:
                events.append(Heard("error", "not TwiML"))
                return Progress(events, ended_by="error")
            transcript = CallTranscript("")
            redirect = None
            for index, verb in enumerate(verbs[start:], start):
                tag = verb.tag
                if tag in ("Say", "Play", "Pause"):
                    self._hear(verb, transcript)
                elif tag == "Gather":
                    for prompt in verb:
                        self._hear(prompt, transcript)
                    question = Question(
                        url,
                        body,
                        index,
                        verb.get("action", ""),
                        verb.get("finishOnKey", "#"),
                        verb.get("actionOnEmptyResult") == "true",
                    )
                    return Progress(events + transcript.events, question=question)
                elif tag == "Redirect":
                    redirect = urljoin(url, (verb.text or "").strip())
                    break
                else:
                    ended = self._ending(verb, transcript)
                    if ended:
                        return Progress(events + transcript.events, ended_by=ended)
            events += transcript.events
            if redirect is None:
                return Progress(events, ended_by="hangup")  # the document ran out: Twilio hangs up
            url, start = redirect, 0
            status, body = self.post(url, params)
        events.append(Heard("error", "too many redirects"))
        return Progress(events, ended_by="loop")

    @staticmethod
    def _ending(verb: ET.Element, transcript: CallTranscript) -> str | None:
        """Record a verb that ends our part of the call; its name, or None for other verbs."""
        tag = verb.tag
        if tag in ("Hangup", "Reject"):
            if tag == "Reject":
                transcript.events.append(Heard("reject", "", dict(verb.attrib)))
            return tag.lower()
        if tag in ("Enqueue", "Dial"):
            attributes = dict(verb.attrib)
            for child in verb.iter():
                if child is verb:
                    continue
                if child.tag == "Task":
                    attributes["task"] = (child.text or "").strip()
                elif child.tag == "Parameter":
                    attributes[f"parameter:{child.get('name')}"] = child.get("value", "")
                elif (child.text or "").strip():
                    attributes[child.tag.lower()] = (child.text or "").strip()
            transcript.events.append(Heard(tag.lower(), (verb.text or "").strip(), attributes))
            return tag.lower()
        return None

    def _status(self, callback: str | None, base: dict[str, str], status: str) -> None:
        if callback:
            self.post(callback, {**base, "CallStatus": status})

    @staticmethod
    def _hear(verb: ET.Element, transcript: CallTranscript) -> None:
        if verb.tag == "Say":
            attributes = {k: v for k, v in verb.attrib.items() if k in ("voice", "language")}
            pauses = sum(_break_ms(pause.get("time", "")) for pause in verb.iter("break"))
            if pauses:
                attributes["pause_ms"] = str(pauses)  # SSML silences inside the text
            loop = verb.get("loop", "1")
            for _ in range(min(int(loop) if loop.isdigit() else 1, 10) or 10):  # 0 = until
                transcript.events.append(Heard("say", _spoken_text(verb), attributes))
        elif verb.tag == "Play":
            transcript.events.append(Heard("play", (verb.text or "").strip()))
        elif verb.tag == "Pause":
            transcript.events.append(Heard("pause", verb.get("length", "1")))
