"""Turn samples into numbers, verdicts, a table and a JSON file.

Requests/s is the median over rounds (one slow round, e.g. a noisy neighbour, does not move it);
latency percentiles are over every request of every round.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import Sample

MIN_RATIO = 0.6
MAX_P99_MS = 50.0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ordered sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[Sample], ok_status: int) -> dict[str, Any]:
    """One server's numbers for one endpoint, over all rounds."""
    latencies = sorted(latency for sample in samples for latency in sample.latencies)
    statuses: Counter[int] = Counter()
    for sample in samples:
        statuses.update(sample.statuses)
    connection_errors = sum(sample.connection_errors for sample in samples)
    unexpected = sum(count for status, count in statuses.items() if status != ok_status)
    return {
        "rps": round(statistics.median(s.rps for s in samples), 1) if samples else 0.0,
        "rps_rounds": [round(s.rps, 1) for s in samples],
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 2),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "connection_errors": connection_errors,
        "errors": connection_errors + unexpected,
        "marked": sum(sample.marked for sample in samples),
        "connections_per_worker": [sample.spread for sample in samples],
    }


def compare(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The ratio and the targets for one endpoint."""
    ratio = ours["rps"] / baseline["rps"] if baseline["rps"] else 0.0
    checks = {
        "ratio": ratio >= MIN_RATIO,
        "p99": ours["p99_ms"] < MAX_P99_MS,
        "errors": ours["errors"] == 0,
    }
    return {"ratio": round(ratio, 3), "checks": checks, "pass": all(checks.values())}


def summarize_check(samples: Sequence[Sample]) -> dict[str, Any]:
    """The check endpoint: requests/s, and answers by class (409 once attempts run out)."""
    summary = summarize(samples, ok_status=200)
    by_class: Counter[str] = Counter()
    for status, count in summary["statuses"].items():
        by_class[f"{status[0]}xx"] += count
    summary["2xx"] = by_class["2xx"]
    summary["4xx"] = by_class["4xx"]
    summary["errors"] = summary["connection_errors"] + by_class["5xx"]
    return summary


@dataclass(frozen=True)
class Row:
    endpoint: str
    baseline: dict[str, Any] | None
    ours: dict[str, Any]
    comparison: dict[str, Any] | None
    reference: bool = False  # not our app: a floor to read the ratios against, no verdict


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def render_table(rows: Sequence[Row], connections: int) -> str:
    """The compact text table printed at the end of a run."""
    header = (
        f"{'POST endpoint':<42}{'rps base':>10}{'rps ours':>10}{'ratio':>7}"
        f"{'p50 base':>10}{'p50 ours':>10}{'p99 base':>10}{'p99 ours':>10}"
        f"{'err base':>9}{'err ours':>9}  result"
    )
    lines = [
        f"targets: ours/baseline rps >= {MIN_RATIO}, ours p99 < {MAX_P99_MS:.0f} ms at "
        f"{connections} connections, 0 errors (latencies in ms)",
        header,
        "-" * len(header),
    ]
    for row in rows:
        base, ours, comparison = row.baseline, row.ours, row.comparison
        if row.reference:
            result = "reference: the most a Redis-backed webhook could reach here"
        elif comparison is not None:
            failed = [name for name, ok in comparison["checks"].items() if not ok]
            result = "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"
        else:
            result = f"rps only: 2xx {ours['2xx']}, 4xx {ours['4xx']}"
        lines.append(
            f"{row.endpoint:<42}{_cell(base and base['rps'], 10)}{_cell(ours['rps'], 10)}"
            f"{_cell(comparison and comparison['ratio'], 7, 2)}"
            f"{_cell(base and base['p50_ms'], 10)}{_cell(ours['p50_ms'], 10)}"
            f"{_cell(base and base['p99_ms'], 10)}{_cell(ours['p99_ms'], 10)}"
            f"{_cell(base and base['errors'], 9, 0)}{_cell(ours['errors'], 9, 0)}  {result}"
        )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
