"""TwiML documents rendered once per shape.

A flow's question is the same document for every caller who reaches it in one language, but
for the action URL of its <Gather> (the call's next step and sealed state). ElementTree's
serialization is most of the cost of building one, so a question is serialized once per shape
(every verb, attribute and text, the action URLs left out) and each call's URLs are put into
the stored text. The shape is the whole document, so two documents share a text only when they
would serialize alike; nothing is guessed from node names or versions.

Only questions are kept (documents whose per-call links are all <Gather>s): the code call's
documents (which say a code) and an agent hand-off (which names the customer) are serialized
each time and never stored.
"""

from __future__ import annotations

import html
from typing import Any

from twilio.twiml import TwiML
from twilio.twiml.voice_response import Gather, VoiceResponse

# Shapes kept per process: a few flows x nodes x locales x prompt variants; more means
# something varies per call, and the store starts again rather than grow.
MAX_SHAPES = 2048
_LINK = "https://link.invalid/{}/"  # stands in for the i-th action URL while serializing
_rendered: dict[Any, str] = {}


def _shape(verb: TwiML | str) -> Any:
    """Everything `verb` serializes from, hashable (TypeError for values that are not)."""
    if isinstance(verb, str):
        return verb
    if verb.value is not None and not isinstance(verb.value, str):
        raise TypeError("a JSON value")
    return (verb.name, tuple(verb.attrs.items()), verb.value, tuple(map(_shape, verb.verbs)))


class LinkedResponse(VoiceResponse):
    """A VoiceResponse that knows its per-call links (verbs whose `action` leads back into the
    flow), so a question is serialized once per shape."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.links: list[TwiML] = []

    def to_xml(self, xml_declaration: bool = True) -> str:
        actions = [verb.attrs.get("action") for verb in self.links]
        questions = (
            isinstance(verb, Gather) and isinstance(action, str)
            for verb, action in zip(self.links, actions, strict=True)
        )
        if not actions or not all(questions):
            return super().to_xml(xml_declaration)
        for index, verb in enumerate(self.links):
            verb.attrs["action"] = _LINK.format(index)
        try:
            try:
                key: Any = (xml_declaration, _shape(self))
                text = _rendered.get(key)
            except TypeError:  # an attribute that is not hashable: serialized as usual
                key, text = None, None
            if text is None and key is not None:
                text = super().to_xml(xml_declaration)
                # A prompt that says a placeholder itself would be filled in too: not kept.
                if all(text.count(_LINK.format(i)) == 1 for i in range(len(actions))):
                    if len(_rendered) >= MAX_SHAPES:
                        _rendered.clear()
                    _rendered[key] = text
                else:
                    text = None
        finally:
            for verb, action in zip(self.links, actions, strict=True):
                verb.attrs["action"] = action
        if text is None:
            return super().to_xml(xml_declaration)
        for index, action in enumerate(actions):
            text = text.replace(_LINK.format(index), html.escape(action, quote=True))
        return text
