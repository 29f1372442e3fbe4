"""Prometheus metrics: the one place that names them, and the text `/metrics` serves.

Under gunicorn every worker counts in files of its own under PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode), which gunicorn's master creates empty at each start
(see ivr.gunicorn_config), so a scrape that reaches any worker reports every worker, the ones
that died since the start included. Anywhere else (tests, `ivr` commands, another WSGI server)
the counters live in the process, as usual.

prometheus_client picks its storage when it is first imported, from the environment: so it is
imported here only when the first metric is made (in a worker, after the fork), never when
`ivr` is imported (gunicorn's master imports the package before it sets the variable).

Labels take values from fixed sets only (channels, reasons, outcomes, URL rules, status
codes, command names): never a number, a code, a sid or a token. Counting is an increment in
memory (or in the worker's mmap file): no Redis round trip on any request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Webhooks must answer well within Twilio's 15 s; Twilio's REST API within
# TWILIO_HTTP_TIMEOUT (up to 60 s, retries included); Redis within a few milliseconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
TWILIO_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Metrics:
    """Every metric the app exports (names and labels in the comments)."""

    # ivr_verifications_started_total{channel}: new verifications (a re-send is not one)
    verifications_started: Counter
    # ivr_verifications_delivered_total{channel}: first proof the code reached the phone
    verifications_delivered: Counter
    # ivr_verifications_approved_total{channel}
    verifications_approved: Counter
    # ivr_verifications_failed_total{channel, reason}: reason one of stats.FAILURE_REASONS
    verifications_failed: Counter
    # ivr_verification_checks_total{outcome}: approved, wrong, expired, not_pending,
    # throttled, not_found, other_number, not_checkable (a malformed code is a 400: not checked)
    checks: Counter
    # ivr_sends_refused_total{by, reason}: by "policy" (reason: country_not_allowed,
    # number_type_refused, channel_unsupported) or "limit" (reason: number, prefix, client)
    sends_refused: Counter
    # ivr_code_sends_started_total{channel} and ivr_code_sends_finished_total{channel, result}:
    # a send is `requested` in Redis from the first to the second; started minus finished is
    # what is in flight, plus what a dead worker left `requested` (see docs/operating.md)
    sends_started: Counter
    sends_finished: Counter
    # ivr_twilio_requests_total{operation, status} and ivr_twilio_request_duration_seconds
    # {operation}: operation "call" or "sms"; status "ok", Twilio's HTTP status, "timeout" or
    # "connection_error" (or "error"); the time includes the bounded retries
    twilio_requests: Counter
    twilio_duration: Histogram
    # ivr_http_requests_total{route, method, status} and ivr_http_request_duration_seconds
    # {route, method}: route is the URL rule (/voice/code/<sid>/<locale>/), never the path
    http_requests: Counter
    http_duration: Histogram
    # ivr_calls_total{flow, outcome}: IVR calls by how the flow's part ended: agent_verified,
    # agent_unverified, transfer, hangup, error (flow "(none)" when no flow answered)
    ivr_calls: Counter
    # ivr_events_total{outcome}: published, delivered, retried, dead_lettered, lease_lost
    events: Counter
    # ivr_redis_errors_total{error}: the exception's class; ivr_redis_command_duration_seconds
    # {command}: the command's name (EVALSHA, HGETALL…) or PIPELINE / MULTI
    redis_errors: Counter
    redis_duration: Histogram
    # Children of redis_duration by command, looked up once: prometheus' labels() takes a lock
    # and builds a tuple on every call, and this one is observed for every Redis command.
    _redis_children: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def redis_duration_of(self, command: str) -> Any:
        """redis_duration's child for `command` (CPython makes the dict's get and set atomic:
        two threads at worst both look it up, and get the same child)."""
        child = self._redis_children.get(command)
        if child is None:
            child = self._redis_children[command] = self.redis_duration.labels(command)
        return child


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, made on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _make()
    return _metrics


def _make() -> Metrics:
    from prometheus_client import Counter, Histogram, disable_created_metrics

    disable_created_metrics()  # the *_created series: as in multiprocess mode, which has none

    # Every metric is a name, a help text and its label names (a histogram: and its buckets).
    # Made here, not at module level: prometheus_client is imported only now (see above).
    def counter(name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels)

    def histogram(
        name: str, documentation: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets)

    return Metrics(
        verifications_started=counter(
            "ivr_verifications_started", "Verifications started", "channel"
        ),
        verifications_delivered=counter(
            "ivr_verifications_delivered",
            "Verifications whose code reached the phone (first proof of delivery)",
            "channel",
        ),
        verifications_approved=counter(
            "ivr_verifications_approved", "Verifications approved", "channel"
        ),
        verifications_failed=counter(
            "ivr_verifications_failed",
            "Verification failures (expired, max_attempts, refused, rate limited, carrier…)",
            "channel",
            "reason",
        ),
        checks=counter("ivr_verification_checks", "Code checks by outcome", "outcome"),
        sends_refused=counter(
            "ivr_sends_refused",
            "Sends refused by the number policy or a send limit",
            "by",
            "reason",
        ),
        sends_started=counter(
            "ivr_code_sends_started", "Sends handed to the carrier (attempt requested)", "channel"
        ),
        sends_finished=counter(
            "ivr_code_sends_finished",
            "Sends whose carrier answer was recorded (accepted or failed)",
            "channel",
            "result",
        ),
        twilio_requests=counter(
            "ivr_twilio_requests", "Twilio REST API calls", "operation", "status"
        ),
        twilio_duration=histogram(
            "ivr_twilio_request_duration_seconds",
            "Twilio REST API call time, retries included",
            TWILIO_BUCKETS,
            "operation",
        ),
        http_requests=counter(
            "ivr_http_requests", "HTTP requests served", "route", "method", "status"
        ),
        http_duration=histogram(
            "ivr_http_request_duration_seconds",
            "HTTP request time in the app",
            HTTP_BUCKETS,
            "route",
            "method",
        ),
        ivr_calls=counter("ivr_calls", "IVR calls by flow and outcome", "flow", "outcome"),
        events=counter("ivr_events", "Events webhook deliveries by outcome", "outcome"),
        redis_errors=counter("ivr_redis_errors", "Redis commands that failed", "error"),
        redis_duration=histogram(
            "ivr_redis_command_duration_seconds",
            "Redis round trip time per command or pipeline",
            REDIS_BUCKETS,
            "command",
        ),
    )


def http_method(method: str) -> str:
    """A request's method as a label: the usual ones, else "other" (clients send anything)."""
    return method if method in HTTP_METHODS else "other"


def call_outcome(outcome: str) -> str:
    """A flow's outcome ("agent verified") as a label value ("agent_verified")."""
    return outcome.replace(" ", "_")


# -- exposition ------------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """Where the workers' metric files are, when serving under gunicorn."""
    folder = os.environ.get(MULTIPROC_DIR_VARIABLE)
    return Path(folder) if folder else None


def prepare_multiprocess_dir(folder: Path) -> Path:
    """Make `folder` an empty metrics folder for a new server, and name it in the environment
    (the workers forked afterwards inherit it). Files left by an earlier server are removed:
    their counters would otherwise be added to this one's."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_DIR_VARIABLE] = str(folder)
    return folder


def mark_process_dead(pid: int) -> None:
    """A worker exited: drop its live gauges (its counters stay, as counters must)."""
    folder = multiprocess_dir()
    if folder is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(folder))


def exposition(extra: Callable[[], Iterator[Any]] | None = None) -> bytes:
    """The metrics as Prometheus' text format: every worker's under gunicorn, else this
    process's; plus `extra`'s metric families (read at scrape time, e.g. from Redis)."""
    metrics()  # every family is listed, even before its first count
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

    folder = multiprocess_dir()
    if folder is None and extra is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    if folder is not None:
        multiprocess.MultiProcessCollector(registry, path=str(folder))
    else:
        registry.register(_Forward(REGISTRY.collect))
    if extra is not None:
        registry.register(_Forward(extra))
    return generate_latest(registry)


class _Forward:
    """A collector that yields what a function collects (prometheus_client's protocol)."""

    def __init__(self, collect: Callable[[], Iterator[Any]]):
        self._collect = collect

    def collect(self) -> Iterator[Any]:
        return self._collect()
