"""What `ivr flows check` reports: a problem with its file, line and severity."""

from __future__ import annotations

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

    def __str__(self) -> str:
        place = self.file + (f":{self.line}" if self.line else "")
        where = f" (node {self.node})" if self.node else ""
        return f"{place}: {self.severity}: {self.message}{where}".lstrip(": ")


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "error"]
