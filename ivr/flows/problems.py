"""What `ivr flows check` reports: a problem with its file, line and severity."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding in a flow file. Errors keep a flow from serving; warnings do not."""

    severity: Severity
    message: str
    file: str = ""
    line: int | None = None  # 1-based, when the YAML position is known
    node: str | None = None
    column: int | None = None  # 1-based, for YAML syntax errors

    def __str__(self) -> str:
        place = self.file + (f":{self.line}" if self.line else "")
        place += f":{self.column}" if self.line and self.column else ""
        where = f" (node {self.node})" if self.node else ""
        return f"{place}: {self.severity}: {self.message}{where}".lstrip(": ")


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "error"]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest of `choices` to a misspelt `name`, else ""."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
