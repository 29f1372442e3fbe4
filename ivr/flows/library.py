"""The app's flow library: FLOWS_DIR loaded with the linter, and checks across its files."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ivr.flows.lint import lint
from ivr.flows.loader import FlowLibrary, Linter, LoadedFlow
from ivr.flows.model import Flow
from ivr.flows.problems import Problem
from ivr.prompts import PromptCatalogs


def linter_for(prompts: PromptCatalogs | None) -> Linter:
    """The loader's linter: schema-valid flows checked against each other and the prompts."""

    def run(flow: Flow, file: str, lines: dict[str, int], names: set[str]) -> list[Problem]:
        return lint(flow, prompts, flow_names=names, file=file, lines=lines)

    return run


def open_library(directory: Path, prompts: PromptCatalogs | None) -> FlowLibrary:
    """The flows of `directory`, linted against `prompts` and reloaded with them."""
    return FlowLibrary(directory, linter_for(prompts), prompts=prompts)


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
