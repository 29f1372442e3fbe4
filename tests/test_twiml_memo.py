"""Questions serialized once per shape (ivr.twiml): each call still gets its own action URL, and
nothing that says a code or names a customer is kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from ivr import twiml
from ivr.twiml import LinkedResponse


@pytest.fixture(autouse=True)
def empty_store():
    twiml._rendered.clear()
    yield
    twiml._rendered.clear()


def _question(cls: type[VoiceResponse], action: str, text: str = "For English, press 1.") -> str:
    response = cls()
    gather = Gather(input="dtmf", num_digits=1, action_on_empty_result=True)
    response.say("Thank you for calling.", language="en-US")
    gather.say(text, language="en-US")
    gather.attrs["action"] = action
    if isinstance(response, LinkedResponse):
        response.links.append(gather)
    response.append(gather)
    return str(response)


def _same_tree(left: str, right: str) -> bool:
    def shape(element: ET.Element) -> tuple:
        return (element.tag, element.attrib, element.text, [shape(c) for c in element])

    return shape(ET.fromstring(left.encode())) == shape(ET.fromstring(right.encode()))


@pytest.mark.parametrize(
    "action",
    [
        "https://ivr.example.test/voice/flow/2?s=AbC-_123",
        "https://ivr.example.test/voice/flow/2?a=1&b=<2>&c=\"3\"&d='4'",
    ],
)
def test_a_question_reads_as_the_plain_response_would_with_its_own_url(action):
    first = _question(LinkedResponse, "https://ivr.example.test/voice/flow/2?s=first")
    again = _question(LinkedResponse, action)
    assert len(twiml._rendered) == 1, "the second call's question came from the first's"
    assert _same_tree(again, _question(VoiceResponse, action))
    assert ET.fromstring(again.encode()).find("Gather").get("action") == action
    assert "s=first" in first and "s=first" not in again


def test_a_different_text_is_a_different_shape():
    _question(LinkedResponse, "https://a.test/1")
    other = _question(LinkedResponse, "https://a.test/1", text="Para español, pulse 2.")
    assert len(twiml._rendered) == 2
    assert "Para español" in other


def test_a_prompt_that_says_the_placeholder_is_not_kept():
    placeholder = twiml._LINK.format(0)
    said = _question(LinkedResponse, "https://a.test/real", text=f"Visit {placeholder}")
    assert twiml._rendered == {}
    assert _same_tree(said, _question(VoiceResponse, "https://a.test/real", f"Visit {placeholder}"))


def test_documents_without_a_question_are_never_kept():
    code = LinkedResponse()
    code.say("Your code is 1 2 3 4 5 6.")
    assert "1 2 3 4 5 6" in str(code)
    hand_off = LinkedResponse()
    dial = Dial(action="https://a.test/dial")
    dial.sip("sip:agent@example.test?X-IVR-Customer=Ada")
    hand_off.links.append(dial)
    hand_off.append(dial)
    assert "Ada" in str(hand_off)
    assert twiml._rendered == {}


def test_the_store_starts_again_rather_than_grow(monkeypatch):
    monkeypatch.setattr(twiml, "MAX_SHAPES", 3)
    for index in range(4):
        _question(LinkedResponse, "https://a.test/x", text=f"Press {index}.")
    assert len(twiml._rendered) == 1
