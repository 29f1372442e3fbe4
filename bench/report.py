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

# The targets (issue 14): each webhook at this fraction of the Twilio-tutorial peer's
# requests/s in the same run, p99 under this at the run's connections, no round below this
# fraction of the endpoint's median (steady), and no error.
MIN_RATIO = 0.85
MAX_P99_MS = 40.0
MIN_STEADY = 0.8


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
    median = statistics.median(s.rps for s in samples) if samples else 0.0
    return {
        "rps": round(median, 1),
        "rps_rounds": [round(s.rps, 1) for s in samples],
        # The slowest round against the median: a dip (a pause, a stall) shows here.
        "steady": round(min(s.rps for s in samples) / median, 3) if median else 0.0,
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


def judge(
    ours: dict[str, Any], references: dict[str, dict[str, Any]], target: str
) -> dict[str, Any]:
    """Our endpoint's ratio to each reference, and the verdict against the targets (the
    ratio to `target`'s requests/s)."""
    ratios = {
        key: round(ours["rps"] / peer["rps"], 3) if peer["rps"] else 0.0
        for key, peer in references.items()
    }
    checks = {
        "ratio": ratios[target] >= MIN_RATIO,
        "p99": ours["p99_ms"] < MAX_P99_MS,
        "steady": ours["steady"] >= MIN_STEADY,
        "errors": ours["errors"] == 0,
    }
    return {"ratios": ratios, "checks": checks, "pass": all(checks.values())}


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
    ours: dict[str, Any]  # the numbers of whoever answered (a reference row: the peer's)
    verdict: dict[str, Any] | None  # a webhook's ratios and checks; None for the others
    kind: str = "webhook"  # "webhook", "api" (rps only) or "reference" (a peer, no verdict)


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def render_table(rows: Sequence[Row], connections: int, reference_keys: Sequence[str]) -> str:
    """The compact text table printed at the end of a run: a ratio column per reference."""
    ratio_headers = "".join(f"{'/' + key:>13}" for key in reference_keys)
    header = (
        f"{'POST endpoint':<46}{'rps':>8}{ratio_headers}{'p50':>7}{'p99':>7}{'steady':>8}"
        f"{'err':>6}  result"
    )
    lines = [
        f"targets: webhooks >= {MIN_RATIO} of /{reference_keys[-1]} rps, p99 < {MAX_P99_MS:.0f} "
        f"ms at {connections} connections, slowest round >= {MIN_STEADY} of the median "
        "(steady), 0 errors; latencies in ms",
        header,
        "-" * len(header),
    ]
    for row in rows:
        ours, verdict = row.ours, row.verdict
        ratios = (verdict or {}).get("ratios", {})
        if row.kind == "reference":
            result = "peer (no target)"
        elif row.kind == "api":
            result = f"rps only: 2xx {ours['2xx']}, 4xx {ours['4xx']}"
        else:
            failed = [name for name, ok in verdict["checks"].items() if not ok]
            result = "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"
        lines.append(
            f"{row.endpoint:<46}{_cell(ours['rps'], 8)}"
            + "".join(_cell(ratios.get(key), 13, 2) for key in reference_keys)
            + f"{_cell(ours['p50_ms'], 7)}{_cell(ours['p99_ms'], 7)}"
            f"{_cell(ours['steady'], 8, 2)}{_cell(ours['errors'], 6, 0)}  {result}"
        )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
