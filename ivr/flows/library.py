"""The app's flow library: FLOWS_DIR loaded with the linter, and checks across its files."""

from __future__ import annotations

from pathlib import Path

from ivr.flows.lint import lint
from ivr.flows.loader import FlowLibrary, Linter, cross_flow_problems
from ivr.flows.model import Flow
from ivr.flows.problems import Problem

__all__ = ["cross_flow_problems", "linter_for", "open_library"]
from ivr.prompts import PromptCatalogs


def linter_for(prompts: PromptCatalogs | None, *, require_audio: bool = False) -> Linter:
    """The loader's linter: schema-valid flows checked against each other and the prompts
    (and, with `require_audio`, against the recordings)."""

    def run(flow: Flow, file: str, lines: dict[str, int], names: set[str]) -> list[Problem]:
        return lint(
            flow, prompts, flow_names=names, file=file, lines=lines, require_audio=require_audio
        )

    return run


def open_library(directory: Path, prompts: PromptCatalogs | None) -> FlowLibrary:
    """The flows of `directory`, linted against `prompts` and reloaded with them."""
    return FlowLibrary(directory, linter_for(prompts), prompts=prompts)
