"""PyYAML's errors in words an IVR designer acts on, placed where the mistake is.

PyYAML says what its scanner expected ("while scanning a simple key … could not find expected
':'"), and often at the line after the mistake. Each kind of error met in hand-written flow
files is said plainly here, at the mark that points at the mistake (where a key, a quote or a
bracket began, when that is the place to look); anything else keeps PyYAML's first line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

_CHARACTER = re.compile(r"found character '(.+)' that cannot start any token")
_UNCLOSED = {
    "while parsing a flow mapping": "a '{' opened here is not closed by '}' (or a ',' is "
    "missing between its entries)",
    "while parsing a flow sequence": "a '[' opened here is not closed by ']' (or a ',' is "
    "missing between its items)",
}


@dataclass(frozen=True)
class YamlMistake:
    """What is wrong, in plain words, and where (1-based; None when PyYAML did not say)."""

    message: str
    line: int | None
    column: int | None


def explain(exc: yaml.YAMLError) -> YamlMistake:
    """The mistake behind a PyYAML error."""
    context = getattr(exc, "context", None) or ""
    problem = getattr(exc, "problem", None) or ""
    context_mark = getattr(exc, "context_mark", None)
    problem_mark = getattr(exc, "problem_mark", None)
    said, at_start = _plain(context, problem)
    mark = context_mark if at_start and context_mark is not None else problem_mark
    if said is None:  # a kind not met in flow files yet: PyYAML's own first line
        said = ((problem or str(exc)).strip().splitlines() or ["unreadable"])[0]
    if mark is None:
        return YamlMistake(said, None, None)
    return YamlMistake(said, mark.line + 1, mark.column + 1)


def _plain(context: str, problem: str) -> tuple[str | None, bool]:
    """(plain words or None, whether the mistake is where the context began)."""
    if context == "while constructing a mapping" and "is given twice" in problem:
        return problem, False
    if context == "while scanning a simple key" and "expected ':'" in problem:
        return "this line has a setting name but no ':' after it (write 'name: value')", True
    if problem == "mapping values are not allowed here":
        return (
            "a ':' inside a value: put the value in quotes if it holds ': ' "
            "(description: \"Press 1: sales\"); otherwise the line above may lack its ':', "
            "or this line is indented more than the settings beside it",
            False,
        )
    if context == "while scanning a quoted scalar":
        return "a quote opened here is never closed", True
    if context in _UNCLOSED and problem.startswith("expected ','"):
        return _UNCLOSED[context], True
    character = _CHARACTER.search(problem)
    if character:
        found = character.group(1)
        if found == "\\t":
            return "a tab: YAML indents with spaces only", False
        return f"a value cannot start with {found!r}: put the value in quotes", False
    if problem.startswith("expected <block end>, but found '<scalar>'"):
        return (
            "text after a quoted value's closing quote: to put a quote inside a value, "
            "double it ('it''s') or quote the value the other way (\"it's\")",
            False,
        )
    if problem.startswith("expected <block end>") or problem == "did not find expected key":
        return (
            "this line is indented differently from the settings beside it (every setting of a "
            "node starts in the same column; indent with spaces)",
            False,
        )
    if problem.startswith("found undefined alias"):
        return "a value starting with '*' (an alias in YAML): put it in quotes", False
    if problem.startswith("could not determine a constructor for the tag"):
        return "a YAML tag ('!…'): flow files hold plain values; remove it, or quote it", False
    return None, False


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping. PyYAML keeps the last one
    silently: a node id or a menu key written twice would lose the first without a word."""


def _mapping_without_duplicates(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    first_line: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"{key!r} is given twice (first on line {first_line[key]}): keep one",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def load(text: str) -> object:
    """yaml.safe_load, refusing a key given twice (a YAMLError that `explain` words)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
