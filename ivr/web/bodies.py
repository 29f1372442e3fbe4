"""Request bodies read strictly: within the size limit however they are sent, JSON with no
surprises, and no field given twice.

Werkzeug caps a body sent without a Content-Length (chunked) at MAX_CONTENT_LENGTH by cutting it
there without a word: a big JSON document read as malformed, a long form lost its tail. Here the
first byte past the limit is the same 413 as a Content-Length over it. Python's JSON parser
recurses once per nesting level (2 KB of `[` raised RecursionError) and keeps the last of two
equal keys (what a gateway checked need not be what we act on): both are refused, in words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import parse_qsl

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream


class BodyRefused(ValueError):
    """A body we will not act on: `reason` names the problem, `field` the field if one is to
    blame; `detail` says what to send instead."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


class _CappedStream(LimitedStream):
    """A body sent without a Content-Length, read to `limit` bytes; one byte more is a 413
    (Werkzeug's own cap stops at the limit, so it cannot tell a body of exactly the limit from
    a longer one cut short)."""

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(stream, limit + 1, is_max=True)
        self.cap = limit

    def readinto(self, b: Any) -> int | None:  # read() and readall() come through here
        count = super().readinto(b)
        if self.tell() > self.cap:
            raise RequestEntityTooLarge()
        return count


class BoundedRequest(Request):
    """Flask's request, whose streamed (chunked) body is held to max_content_length as one with
    a Content-Length is. The limit is read when the body is first read, so a view's own limit
    set before then (the console's uploads) applies."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        # A server that sets wsgi.input_terminated (gunicorn, Werkzeug's) ends the stream
        # itself; without it, Werkzeug reads nothing of a body that has no length.
        if (
            limit is not None
            and self.content_length is None
            and self.environ.get("wsgi.input_terminated")
            and not self.shallow
        ):
            return _CappedStream(self.environ["wsgi.input"], limit)
        return super().stream

    def _load_form_data(self) -> None:
        """A form-encoded body (every Twilio webhook's) parsed as Werkzeug parses one: one
        parse_qsl over the body, within the same limits, and no fields from a body that is not
        UTF-8; without the parser objects Werkzeug builds for it on every request, which cost
        about as much as the parsing (~20 us a webhook, make bench)."""
        if "form" in self.__dict__ or self.mimetype != "application/x-www-form-urlencoded":
            return super()._load_form_data()
        stream = self._get_stream_for_parsing()
        try:
            items = parse_qsl(
                stream.read().decode(), keep_blank_values=True, errors="werkzeug.url_quote"
            )
        except ValueError:  # not UTF-8: Werkzeug's parser is silent too
            items = []
        fields = self.__dict__
        fields["stream"] = stream
        fields["form"] = self.parameter_storage_class(items)
        fields["files"] = self.parameter_storage_class()
        return None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any]:
    """`data` as one JSON object; BodyRefused (`invalid_json`, `duplicate_field`) otherwise."""
    try:
        parsed = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise BodyRefused(
            "duplicate_field", f"'{exc.key}' is given twice: give each field once", exc.key
        ) from None
    except RecursionError:  # the C parser's depth is Python's recursion limit
        raise BodyRefused(
            "invalid_json", "the JSON is nested too deeply: send one JSON object of fields"
        ) from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise BodyRefused(
            "invalid_json", "the body is not valid JSON: send a JSON object"
        ) from None
    if not isinstance(parsed, dict):
        raise BodyRefused("invalid_json", "the body must be a JSON object")
    return parsed


def unique_fields(
    pairs: Iterable[tuple[str, Any]], canonical: dict[str, str] | None = None
) -> dict[str, Any]:
    """Fields by their lower-cased name (or the name `canonical` gives that one); a name given
    twice, or in two cases (`to` and `To`), or two names for one field, is BodyRefused."""
    fields: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        key = (canonical or {}).get(key, key)
        if key in given:
            first = given[key]
            said = (
                f"'{name}' is given twice"
                if first == name
                else f"'{first}' and '{name}' are both given ({key!r})"
            )
            raise BodyRefused("duplicate_field", f"{said}: give each field once", key)
        given[key], fields[key] = name, value
    return fields


def repeated_name(pairs: Iterable[tuple[str, Any]]) -> str | None:
    """The first name that comes twice in `pairs` (a form's items, multi=True), if any."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return name
        seen.add(name)
    return None
