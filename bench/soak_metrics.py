"""The app's own view of the soak, from its /metrics (every worker's counts, multiprocess):
how long each webhook took inside the app, and its Redis round trips.

Why: the soak's latency runs from the request's first byte sent to the answer's last byte
read. Set beside the app's own time, the difference is time spent before the app saw the
request (the kernel's accept queue, gunicorn's thread pool, a worker busy with another
request under the GIL, the load driver's event loop) rather than in our code.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HTTP_DURATION = "ivr_http_request_duration_seconds"
REDIS_DURATION = "ivr_redis_command_duration_seconds"


def histogram_quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Prometheus's histogram_quantile over cumulative (upper bound, count) buckets: linear
    within the bucket the rank falls in. Coarse (the app's buckets are 5, 10, 25, 50, 100 ms…)."""
    ordered = sorted(buckets)
    if not ordered or not ordered[-1][1]:
        return 0.0
    rank = fraction * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower


def _histograms(text: str, name: str, label: str) -> dict[str, dict[str, Any]]:
    """Per value of `label`: count, sum and cumulative buckets of histogram `name`."""
    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "sum": 0.0, "le": {}})
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            key = sample.labels.get(label, "")
            entry = found[key]
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                entry["le"][bound] = entry["le"].get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                entry["count"] += sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] += sample.value
    return found


def app_side(text: str) -> dict[str, Any]:
    """The webhooks' time inside the app, per route, and Redis's round trips, per command."""
    routes = {}
    for route, entry in _histograms(text, HTTP_DURATION, "route").items():
        if not route.startswith("/voice/") or not entry["count"]:
            continue
        buckets = list(entry["le"].items())
        routes[route] = {
            "requests": int(entry["count"]),
            "mean_ms": round(1000 * entry["sum"] / entry["count"], 2),
            "p50_ms": round(1000 * histogram_quantile(buckets, 0.50), 1),
            "p99_ms": round(1000 * histogram_quantile(buckets, 0.99), 1),
        }
    commands = {
        command: {
            "calls": int(entry["count"]),
            "mean_ms": round(1000 * entry["sum"] / entry["count"], 3),
            "total_seconds": round(entry["sum"], 1),
        }
        for command, entry in _histograms(text, REDIS_DURATION, "command").items()
        if entry["count"]
    }
    return {"webhooks": routes, "redis_commands": commands}
