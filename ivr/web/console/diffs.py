"""A draft against its live version, as unified diff lines, for the flow and prompt pages (and
the audit log's before/after of a flow draft)."""

from __future__ import annotations

import difflib


def diff_lines(before: str, after: str, context: int = 3) -> list[str]:
    return list(
        difflib.unified_diff(
            before.splitlines(), after.splitlines(), "live", "draft", n=context, lineterm=""
        )
    )
