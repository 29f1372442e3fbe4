"""A node's settings as a form, generated from the flow model, and a submitted form written
back into the flow's YAML.

Why generated: every node type's pydantic model already says what may be set (types, bounds,
defaults, descriptions), so a new setting appears in the console without a new template. Why
ruamel.yaml: a team that keeps its flows in git keeps its comments and key order when a
supervisor changes one menu option in the console.
"""

from __future__ import annotations

import io
import types
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from ivr.flows import model

KEYPAD = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "*", "#")
_SPARE_ROWS = 2  # empty rows under a key map, to add options


def _pattern(annotation: Any) -> str | None:
    """The regex pattern of an Annotated[str, StringConstraints(...)] (or None)."""
    for meta in getattr(annotation, "__metadata__", ()):
        pattern = getattr(meta, "pattern", None)
        if pattern:
            return pattern
    return None


_PATTERN_KINDS = {
    _pattern(model.PromptKey): "prompt",
    _pattern(model.NodeId): "node",
    _pattern(model.Locale): "locale",
    _pattern(model.E164): "phone",
    _pattern(model.FlowName): "flow",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None is allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _base_kind(annotation: Any, info: FieldInfo | None = None) -> str:
    # A required Annotated field has its constraints moved onto the FieldInfo by pydantic.
    hoisted = next((getattr(m, "pattern", None) for m in (info.metadata if info else [])), None)
    if hoisted and _PATTERN_KINDS.get(hoisted):
        return _PATTERN_KINDS[hoisted]
    if get_origin(annotation) is Annotated:
        kind = _PATTERN_KINDS.get(_pattern(annotation))
        if kind:
            return kind
        annotation = get_args(annotation)[0]
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if get_origin(annotation) is Literal:
        return "choice"
    if annotation is str:
        return "text"
    return "lines"


@dataclass
class FormField:
    """One control of a node form."""

    name: str
    label: str
    kind: str  # prompt, prompts, node, bool, int, choice, text, keymap, lines, dial, locale…
    value: Any
    required: bool
    help: str = ""
    choices: list[str] = field(default_factory=list)
    minimum: int | None = None
    maximum: int | None = None
    rows: list[tuple[str, str]] = field(default_factory=list)  # keymap rows (key, target)
    value_kind: str = ""  # keymap: what the rows map to ("node" or "locale")


def _bounds(info: FieldInfo, annotation: Any) -> tuple[int | None, int | None]:
    low = high = None
    metadata = list(info.metadata) + list(getattr(annotation, "__metadata__", ()))
    for meta in metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    return low, high


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _lines_value(value: Any) -> str:
    """A mapping or list as lines a person can edit (`mon-fri: 08:00-17:00`, one date a line)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return "\n".join(
            f"{key}: {', '.join(map(str, item)) if isinstance(item, list) else item}"
            for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return "\n".join(str(item) for item in value)
    return str(value)


def form_fields(node: BaseModel, node_ids: list[str]) -> list[FormField]:
    """The controls for `node`'s settings, in the model's order, filled with its values."""
    fields: list[FormField] = []
    for name, info in type(node).model_fields.items():
        if name == "type":
            continue
        annotation, nullable = _unwrap(info.annotation)
        value = getattr(node, name)
        required = info.is_required()
        help_text = info.description or ""
        origin = get_origin(annotation)
        if origin is dict and name == "options":
            target = _base_kind(get_args(annotation)[1])
            rows = [(key, str(item)) for key, item in (value or {}).items()]
            rows += [("", "")] * _SPARE_ROWS
            fields.append(
                FormField(
                    name,
                    "Options",
                    "keymap",
                    value,
                    required,
                    help_text or "A key of the keypad, and where it leads.",
                    choices=list(KEYPAD),
                    rows=rows,
                    value_kind=target,
                )
            )
            continue
        if origin is list and _base_kind(get_args(annotation)[0]) == "prompt":
            fields.append(
                FormField(name, _label(name), "prompts", list(value), required, help_text)
            )
            continue
        if isinstance(annotation, type) and issubclass(annotation, model.DialTarget):
            fields.append(
                FormField(
                    name,
                    "Dial",
                    "dial",
                    value,
                    required,
                    "Exactly one of number, sip or client, and how long it rings.",
                )
            )
            continue
        kind = _base_kind(annotation, info)
        low, high = _bounds(info, annotation)
        choices = [str(c) for c in get_args(annotation)] if kind == "choice" else []
        if kind == "lines":
            value = _lines_value(value)
            if origin is dict and get_args(annotation)[1] is str:
                help_text = help_text or "One `name: value` a line."
            elif annotation == list[date]:
                help_text = (help_text + " One date a line.").strip()
        fields.append(
            FormField(
                name,
                _label(name),
                kind,
                value,
                required and not nullable,
                help_text,
                choices=choices if kind != "node" else node_ids,
                minimum=low,
                maximum=high,
            )
        )
    return fields


# -- writing a submitted form back ---------------------------------------------------------------


class FormError(ValueError):
    """A submitted value that cannot even be written (not a number…); `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the lines nobody edited
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _parse_lines(text: str, as_mapping: bool, as_lists: bool) -> Any:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not as_mapping:
        return lines
    mapping = CommentedMap()
    for line in lines:
        key, sep, rest = line.partition(":")
        if not sep:
            raise FormError("", f"{line!r}: expected 'name: value'")
        rest = rest.strip()
        mapping[key.strip()] = (
            [p.strip() for p in rest.split(",") if p.strip()] if as_lists else rest
        )
    return mapping


def submitted_node(node: BaseModel, form: dict[str, list[str]]) -> dict[str, Any]:
    """The node's settings as the form says them (only what differs from the defaults, plus
    what is required), ready to replace the node in the YAML. Raises FormError."""
    data: dict[str, Any] = {"type": node.type}  # type: ignore[attr-defined]
    for name, info in type(node).model_fields.items():
        if name == "type":
            continue
        annotation, _ = _unwrap(info.annotation)
        origin = get_origin(annotation)
        values = form.get(name, [])
        text = values[0].strip() if values else ""
        if origin is dict and name == "options":
            keys_, targets = form.get("options.key", []), form.get("options.target", [])
            options = CommentedMap()
            for key, target in zip(keys_, targets, strict=False):
                key, target = key.strip(), target.strip()
                if not key and not target:
                    continue
                if not key or not target:
                    raise FormError(name, "every option needs a key and a target")
                if key in options:
                    raise FormError(name, f"key {key} is used twice")
                options[int(key) if key.isdigit() else key] = target  # YAML's natural `1: x`
            data[name] = options
            continue
        if origin is list and _base_kind(get_args(annotation)[0]) == "prompt":
            prompts = [value.strip() for value in values if value.strip()]
            data[name] = prompts[0] if len(prompts) == 1 else prompts
            continue
        if isinstance(annotation, type) and issubclass(annotation, model.DialTarget):
            dial = {
                part: form.get(f"{name}.{part}", [""])[0].strip()
                for part in ("number", "sip", "client", "caller_id")
            }
            dial = {k: v for k, v in dial.items() if v}
            ring = form.get(f"{name}.timeout_seconds", [""])[0].strip()
            if ring:
                dial["timeout_seconds"] = _as_int(name, ring)
            if dial:
                data[name] = dial
            continue
        kind = _base_kind(annotation, info)
        if kind == "bool":
            data[name] = bool(text)
        elif kind == "int":
            if text:
                data[name] = _as_int(name, text)
        elif kind == "lines":
            try:
                if origin is dict:
                    data[name] = _parse_lines(
                        text, True, as_lists=get_args(annotation)[1] is not str
                    )
                elif text:
                    data[name] = _parse_lines(text, False, False)
            except FormError as exc:
                raise FormError(name, str(exc)) from None
        elif text:
            data[name] = text
    return data


def defaults_of(node: BaseModel) -> dict[str, Any]:
    """The node type's defaults: a setting equal to its default is not written unless the
    file already said it."""
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in type(node).model_fields.items()
        if not info.is_required()
    }


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, dict) and isinstance(default, dict):
        return {str(k): v for k, v in value.items()} == {str(k): v for k, v in default.items()}
    return value == default or (value in ({}, [], "") and not default)


def _as_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FormError(name, f"{text!r} is not a whole number") from None


def replace_node(
    text: str, node_id: str, settings: dict[str, Any], defaults: dict[str, Any] | None = None
) -> str:
    """The flow's YAML with node `node_id` set to `settings`; comments and order are kept, and
    a setting at its default is written only where the file said it already."""
    defaults = defaults or {}
    yaml = _yaml()
    document = yaml.load(text)
    nodes = document["nodes"]
    current = nodes.get(node_id)
    if not isinstance(current, CommentedMap):
        current = nodes[node_id] = CommentedMap()
    for key, value in settings.items():
        said = key in current
        if key in defaults and _is_default(value, defaults[key]) and not said:
            continue
        if value in (None, "", [], {}) and key in defaults:
            current.pop(key, None)
            continue
        if isinstance(value, dict) and isinstance(current.get(key), CommentedMap):
            _update_mapping(current[key], value)
        elif current.get(key) != value:
            current[key] = value
    for key in [k for k in current if k not in settings]:
        del current[key]
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _update_mapping(target: CommentedMap, value: dict[Any, Any]) -> None:
    """Make `target` equal `value` in place, keeping the comments of entries that stay."""
    wanted = {str(k): (k, v) for k, v in value.items()}
    for key in [k for k in target if str(k) not in wanted]:
        del target[key]
    existing = {str(k): k for k in target}
    for text_key, (key, item) in wanted.items():
        target[existing.get(text_key, key)] = item


__all__ = ["FormError", "FormField", "defaults_of", "form_fields", "replace_node", "submitted_node"]
