"""Flow files on disk: parsed, validated, linted, and reloaded when they change.

Every worker keeps its own `FlowLibrary`. On a request it looks at the folder at most once per
`RELOAD_INTERVAL_SECONDS` (a stat per file, no reading), and reloads only the files whose size or
modification time changed. A file that no longer validates is refused, logged loudly, and the
last good version of that flow keeps serving, so a typo saved mid-day never takes the IVR down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ivr.flows import yaml_errors
from ivr.flows.model import Flow, node_types
from ivr.flows.problems import Problem, did_you_mean, errors
from ivr.prompts import PromptCatalogs

log = logging.getLogger(__name__)

RELOAD_INTERVAL_SECONDS = 1.0
FLOW_SUFFIX = ".yaml"


class FlowFileError(Exception):
    """A flow file that cannot serve, with every problem found in it."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedFlow:
    """A flow and what was found while loading it (warnings only: errors refuse the file)."""

    flow: Flow
    path: Path | None  # the file it came from; None for a version published in Redis
    warnings: list[Problem] = field(default_factory=list)
    revision: str = ""  # the published version ("7"), a trial ("trial:<digest>"), or "" (a file)
    text: str = ""  # the YAML it was read from (a file's text as it was when loaded)


def _line_of(root: yaml.Node | None, location: Iterable[Any]) -> int | None:
    """The line of the YAML node at a pydantic error location (tags of unions are skipped)."""
    if root is None:
        return None
    node = root
    line = node.start_mark.line + 1
    for part in location:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                continue  # a union's tag ("menu") or a missing key: stay on the mapping
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _node_lines(root: yaml.Node | None) -> dict[str, int]:
    """Node id -> the line where its definition starts."""
    if not isinstance(root, yaml.MappingNode):
        return {}
    nodes = next((v for k, v in root.value if getattr(k, "value", None) == "nodes"), None)
    if not isinstance(nodes, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in nodes.value}


def _without_node_type(location: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic location inside a node, without the node's type that pydantic puts after its
    id (nodes.main_menu.menu.max_failure): the file says nodes.main_menu.max_failure."""
    if len(location) >= 3 and location[0] == "nodes" and location[2] in node_types():
        return location[:2] + location[3:]
    return location


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (DialTarget in `DialTarget | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (_model_of(arg) for arg in get_args(annotation))), None)


def _settings_at(location: tuple[Any, ...]) -> list[str]:
    """The settings a mapping takes, for the pydantic location of one of its keys: a flow's, a
    node type's, or a nested setting's (an agent's dial); [] when unknown."""
    parent = location[:-1]
    model: type[BaseModel] | None = Flow
    if parent[:1] == ("nodes",):
        model = node_types().get(str(parent[2])) if len(parent) >= 3 else None
        parent = parent[3:]
    for part in parent:
        field = model.model_fields.get(str(part)) if model else None
        model = _model_of(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _describe(error: dict[str, Any]) -> str:
    """A pydantic error as one line an IVR designer understands."""
    location = ".".join(str(part) for part in _without_node_type(error["loc"]))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        settings = _settings_at(error["loc"])
        hint = did_you_mean(str(error["loc"][-1]), settings)
        if settings and not hint:
            hint = f"; the settings here are: {', '.join(settings)}"
        message = "unknown setting" + (hint or " (a typo?)")
    elif error["type"] == "union_tag_invalid":
        message = "unknown node type; expected one of: " + error["ctx"]["expected_tags"]
    elif error["type"] == "string_pattern_mismatch":
        message = f"{error['input']!r} does not have the expected form"
    return f"{location}: {message}" if location else message


def read_flow_file(path: Path) -> str:
    """A flow file's text. Raises FlowFileError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowFileError([Problem("error", f"cannot read the file: {exc}", str(path))]) from None


def parse_flow_file(path: Path) -> tuple[Flow, dict[str, int]]:
    """A flow file read and validated against the schema: the flow and its node lines.

    Raises FlowFileError with a problem per schema error, each with its line.
    """
    return parse_flow_text(read_flow_file(path), path.stem, str(path))


def parse_flow_text(text: str, flow_name: str, source: str) -> tuple[Flow, dict[str, int]]:
    """A flow's YAML text validated against the schema, as if it were the file `source` of the
    flow `flow_name` (a draft in the console, a published version): the flow and node lines.

    Raises FlowFileError with a problem per schema error, each with its line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml_errors.load(text)
    except yaml.YAMLError as exc:
        mistake = yaml_errors.explain(exc)
        message = f"not valid YAML: {mistake.message}"
        problem = Problem("error", message, source, mistake.line, column=mistake.column)
        raise FlowFileError([problem]) from None
    if not isinstance(data, dict):
        raise FlowFileError(
            [Problem("error", "a flow file is a mapping (name, start, nodes…)", source, 1)]
        )
    data.setdefault("name", flow_name)
    if data["name"] != flow_name:
        line = _line_of(root, ["name"])
        message = f"name {data['name']!r} differs from the file name {flow_name!r}"
        raise FlowFileError([Problem("error", message, source, line)])
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem("error", _describe(error), source, _line_of(root, error["loc"]))
            for error in exc.errors(include_url=False)
        ]
        raise FlowFileError(problems) from None
    return flow, _node_lines(root)


Linter = Callable[[Flow, str, dict[str, int], set[str]], list[Problem]]


def load_flow_file(path: Path, linter: Linter | None, flow_names: set[str]) -> LoadedFlow:
    """Parse, validate and lint one file. Raises FlowFileError if anything is an error.

    The text is kept: publishing the file must publish what was checked, not whatever the
    file holds a moment later (an editor may be writing the next, broken, version)."""
    text = read_flow_file(path)
    flow, lines = parse_flow_text(text, path.stem, str(path))
    problems = linter(flow, str(path), lines, flow_names) if linter else []
    if errors(problems):
        raise FlowFileError(problems)
    return LoadedFlow(flow, path, problems, text=text)


def load_flow_text(
    text: str,
    flow_name: str,
    source: str,
    linter: Linter | None,
    flow_names: set[str],
    *,
    revision: str = "",
) -> LoadedFlow:
    """Parse, validate and lint a flow's text (a draft, a published version). Raises
    FlowFileError if anything is an error."""
    flow, lines = parse_flow_text(text, flow_name, source)
    problems = linter(flow, source, lines, flow_names) if linter else []
    if errors(problems):
        raise FlowFileError(problems)
    return LoadedFlow(flow, None, problems, revision=revision, text=text)


class FlowLookups:
    """What the engine and the CLI read from a library, in terms of the two ways it serves a
    flow (`served`, `served_for_number`): the same for files and for published versions."""

    def served(self, name: str, revision: str = "") -> LoadedFlow | None:
        raise NotImplementedError

    def served_for_number(self, called: str) -> LoadedFlow | None:
        raise NotImplementedError

    def get(self, name: str) -> Flow | None:
        served = self.served(name)
        return served.flow if served else None

    def for_number(self, called: str) -> Flow | None:
        """The flow answering `called` (Twilio's To): the one naming it, else the default."""
        served = self.served_for_number(called)
        return served.flow if served else None


class FlowLibrary(FlowLookups):
    """The flows of one folder, by name and by called number; reloads changed files."""

    def __init__(
        self,
        directory: Path,
        linter: Linter | None = None,
        *,
        prompts: PromptCatalogs | None = None,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.directory = Path(directory)
        self.linter = linter
        # The linter checks prompt keys against these: when they reload, every flow is
        # checked again (a flow refused for a missing prompt is served once it exists).
        self.prompts = prompts
        self._prompts_version = prompts.version if prompts else 0
        self.reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (mtime_ns, size) last read
        self._flows: dict[str, LoadedFlow] = {}
        self._refused: dict[Path, list[Problem]] = {}
        self._checked_at = float("-inf")
        self.refresh(force=True)

    # -- reading ---------------------------------------------------------------------------

    def served_for_number(self, called: str) -> LoadedFlow | None:
        """The flow answering `called`, with what it was loaded from."""
        self.refresh()
        return flow_for_number(self._flows, called)

    def served(self, name: str, revision: str = "") -> LoadedFlow | None:  # noqa: ARG002
        """The flow `name` (files have one revision: the file as it is now)."""
        self.refresh()
        return self._flows.get(name)

    @property
    def flows(self) -> dict[str, LoadedFlow]:
        self.refresh()
        return dict(self._flows)

    @property
    def refused(self) -> dict[Path, list[Problem]]:
        """Files whose current version was refused (their last good version, if any, serves)."""
        return dict(self._refused)

    # -- reloading -------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Reload changed files, at most once per reload interval (unless forced)."""
        now = self._clock()
        if not force and now - self._checked_at < self.reload_interval:
            return
        with self._lock:
            if not force and now - self._checked_at < self.reload_interval:
                return
            self._checked_at = now
            if self.prompts is not None:
                self.prompts.refresh()
                if self.prompts.version != self._prompts_version:
                    self._prompts_version = self.prompts.version
                    self._seen.clear()  # every file is read and linted again
            self._reload_changed()

    def _stat_all(self) -> dict[Path, tuple[int, int]]:
        found = {}
        try:
            paths = sorted(self.directory.glob(f"*{FLOW_SUFFIX}"))
        except OSError:
            paths = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def _reload_changed(self) -> None:
        """Read changed files into a new dict, swapped in whole: readers in other threads
        never see it change size under them."""
        flows = dict(self._flows)
        try:
            self._read_changed(flows)
        finally:
            changed = flows != self._flows
            self._flows = flows
        if changed:
            for problem in cross_flow_problems(flows):
                log.log(
                    logging.ERROR if problem.severity == "error" else logging.WARNING,
                    "flows: %s",
                    problem.message,
                )

    def _read_changed(self, flows: dict[str, LoadedFlow]) -> None:
        current = self._stat_all()
        changed = [path for path, mark in current.items() if self._seen.get(path) != mark]
        removed = [path for path in self._seen if path not in current]
        if not changed and not removed:
            return
        for path in removed:
            self._seen.pop(path, None)
            self._refused.pop(path, None)
            loaded = flows.get(path.stem)
            if loaded and loaded.path == path:
                del flows[path.stem]
                log.warning("flow %s: file removed; no longer served", path.stem)
        names = {path.stem for path in current}
        for path in changed:
            self._seen[path] = current[path]
            try:
                loaded = load_flow_file(path, self.linter, names)
            except FlowFileError as exc:
                self._refused[path] = exc.problems
                serving = (
                    "the last good version keeps serving"
                    if path.stem in flows
                    else "it is not served"
                )
                log.error(
                    "flow %s: REFUSED, %s:\n  %s",
                    path.stem,
                    serving,
                    "\n  ".join(str(p) for p in errors(exc.problems)),
                )
                continue
            self._refused.pop(path, None)
            previous = path.stem in flows
            flows[path.stem] = loaded
            log.info("flow %s: %s from %s", path.stem, "reloaded" if previous else "loaded", path)
            for warning in loaded.warnings:
                log.warning("flow %s: %s", path.stem, warning)


def flow_for_number(flows: dict[str, LoadedFlow], called: str) -> LoadedFlow | None:
    """Of `flows`, the one naming `called` (Twilio's To), else the default one."""
    for loaded in flows.values():
        if called in loaded.flow.numbers:
            return loaded
    for loaded in flows.values():
        if loaded.flow.default:
            return loaded
    return flows.get("default")


def cross_flow_problems(flows: dict[str, LoadedFlow]) -> list[Problem]:
    """What no single file shows: a number claimed twice, two defaults, or none."""
    problems = []
    claims: dict[str, list[str]] = defaultdict(list)
    for name, loaded in sorted(flows.items()):
        for number in loaded.flow.numbers:
            claims[number].append(name)
    for number, names in sorted(claims.items()):
        if len(names) > 1:
            problems.append(
                Problem("error", f"{number} is claimed by several flows: {', '.join(names)}")
            )
    defaults = sorted(name for name, loaded in flows.items() if loaded.flow.default)
    if len(defaults) > 1:
        problems.append(Problem("error", f"several flows say default: true: {', '.join(defaults)}"))
    if flows and not defaults and "default" not in flows:
        problems.append(
            Problem(
                "warning",
                "no flow says default: true: calls to numbers no flow names hear an apology",
            )
        )
    return problems
