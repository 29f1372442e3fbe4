"""Request bodies read strictly: JSON with no surprises, and no field given twice.

Python's JSON parser recurses once per nesting level (2 KB of `[` raised RecursionError) and
keeps the last of two equal keys (what a gateway checked need not be what we act on): both are
refused, in words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


class BodyRefused(ValueError):
    """A body we will not act on: `reason` names the problem, `field` the field if one is to
    blame; `detail` says what to send instead."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


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
