"""One benchmark run: our app and three peers under gunicorn, state made through the API, rounds.

Our app runs with the simulated carrier (no Twilio account), on Redis DB 14 at 127.0.0.1:6379
when that answers, else on the embedded Redis. Send and check limits are relaxed so that the
benchmark measures the code paths rather than the rate limiter's refusals.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench import caller_time, capacity, loadgen, report
from bench.baseline_app import REDIS_URL_VARIABLE, TOKEN_FILE_VARIABLE
from bench.servers import (
    HOST,
    GunicornServer,
    ServerFailed,
    clean_environment,
    stop_embedded_redis,
)
from bench.workload import (
    ENDPOINTS,
    ENGLISH,
    MENU_AGAIN,
    REFERENCES,
    REVEALS_PER_CALL,
    TUTORIAL,
    Endpoint,
    Reference,
    SetupError,
    State,
    Target,
    prepare_state,
)
from ivr.store import EmbeddedRedis

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results" / "latest.json"

SERVER_REDIS_URL = "redis://127.0.0.1:6379/14"  # a DB of its own: flushed before and after
API_TOKEN = "bench-api-token-0123456789abcdef"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"
RELAXED_LIMIT = "100000/1h"
OTP_MAX_ATTEMPTS = "20"
WARMUP_SECONDS = 0.3
SLOW_PEER = 0.9  # a peer's round below this fraction of its median: the machine was slow


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per endpoint, server, round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    # Pools sized by default for the rounds and seconds asked, at --feed-rps, so that nearly
    # every reveal reads the code and nearly every check meets a pending verification; the
    # notes say how many did.
    parser.add_argument(
        "--call-numbers",
        type=int,
        default=None,
        help="numbers called for the call webhooks (each call hears its code "
        f"{REVEALS_PER_CALL} times before the cap; default: enough for the run)",
    )
    parser.add_argument(
        "--sends-per-number",
        type=int,
        default=3,
        help="calls per verification (re-sends), each with its own CallSid",
    )
    parser.add_argument(
        "--check-numbers",
        type=int,
        default=None,
        help="verifications worn out by the check endpoint (default: enough for the run)",
    )
    # Stateful feeds (a new CallSid per /voice/incoming request, a step per menu request) must
    # not repeat a request on our app: sized for this rate over every run, above anything our
    # app reaches on them here (about 1,000-1,500 rps).
    parser.add_argument(
        "--feed-rps",
        type=int,
        default=2500,
        help="requests/s the stateful feeds are sized for (beyond it they wrap: the notes say)",
    )
    parser.add_argument(
        "--menu-calls",
        type=int,
        default=2000,
        help="calls answered for the menu steps, taken round-robin (many more than the "
        "connections, so that no two requests in flight are for one call)",
    )
    parser.add_argument(
        "--redis",
        choices=("auto", "embedded"),
        default="auto",
        help=f"auto: {SERVER_REDIS_URL} when it answers, else embedded",
    )
    parser.add_argument(
        "--capacity-at",
        type=int,
        default=100_000,
        help="items for the Redis bytes per verification and per call state (0: skip them "
        "and the WAIT cost; see bench/capacity.py)",
    )
    parser.add_argument(
        "--fill",
        type=int,
        default=None,
        help="also compare start, check and an IVR step with 1,000 and this many "
        "verifications kept (e.g. 1000000)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args(argv)


def _size_pools(args: argparse.Namespace) -> None:
    """Pools the run cannot use up at --feed-rps (each endpoint runs `rounds` x `seconds`):
    reveals are capped per call, checks per verification."""
    requests = args.feed_rps * args.rounds * args.seconds
    if args.call_numbers is None:
        args.call_numbers = math.ceil(requests / (REVEALS_PER_CALL * args.sends_per_number))
    if args.check_numbers is None:
        args.check_numbers = math.ceil(requests / int(OTP_MAX_ATTEMPTS))


def _server_redis() -> redis.Redis | None:
    """DB 14 of the local Redis server, emptied, or None when no server answers."""
    client = redis.Redis.from_url(SERVER_REDIS_URL, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError:
        client.close()
        return None
    return client


def _concurrency() -> dict[str, str]:
    """Workers and threads, the same for both servers (the caller's choice, else the config's
    defaults)."""
    return {
        "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "2"),
        "GUNICORN_THREADS": os.environ.get("GUNICORN_THREADS", "4"),
    }


@contextlib.contextmanager
def _servers(workdir: Path, redis_url: str | None) -> Iterator[tuple[GunicornServer, ...]]:
    """Ours and the three peers of bench/baseline_app.py, started and ready; stopped (with
    anything they started) on the way out."""
    base_env = clean_environment() | _concurrency() | {"PYTHONPATH": str(PROJECT_DIR)}
    instance = workdir / "instance"
    ours = GunicornServer("ours", "ivr:create_app()", base_env, workdir / "ours.log")
    ours.env |= {
        "INSTANCE_PATH": str(instance),
        "PUBLIC_BASE_URL": ours.base_url,
        "IVR_API_TOKEN": API_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "SEND_LIMIT_PER_NUMBER": RELAXED_LIMIT,
        "SEND_LIMIT_PER_PREFIX": RELAXED_LIMIT,
        "SEND_LIMIT_PER_TOKEN": RELAXED_LIMIT,
        "CHECK_FAILURE_LIMIT_PER_NUMBER": RELAXED_LIMIT,
        "OTP_MAX_ATTEMPTS": OTP_MAX_ATTEMPTS,
    } | ({"REDIS_URL": redis_url} if redis_url else {})
    # The shared gunicorn config starts an embedded Redis when REDIS_URL is unset; the baseline
    # uses no store, so a placeholder keeps it from starting one.
    baseline = GunicornServer(
        "baseline",
        "bench.baseline_app:create_app()",
        base_env | {"REDIS_URL": "redis://unused.invalid/0"},
        workdir / "baseline.log",
    )
    # The peers that read Redis read the one our app uses, and check signatures with the
    # development token our app writes into its instance folder at start.
    peer_env = base_env | {
        "REDIS_URL": "redis://unused.invalid/0",
        REDIS_URL_VARIABLE: redis_url or EmbeddedRedis(instance / "redis").url,
        TOKEN_FILE_VARIABLE: str(instance / "webhook_auth_token"),
    }
    reference = GunicornServer(
        "reference", "bench.baseline_app:create_redis_app()", peer_env, workdir / "reference.log"
    )
    tutorial = GunicornServer(
        "tutorial", "bench.baseline_app:create_tutorial_app()", peer_env, workdir / "tutorial.log"
    )
    servers = (baseline, ours, reference, tutorial)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(int(base_env["WEB_CONCURRENCY"]))
        yield servers
    finally:
        for server in servers:
            server.stop()
        if not redis_url:
            stop_embedded_redis(instance / "redis")


def _requests_per_feed(args: argparse.Namespace) -> int:
    """The most requests one server may take from one feed over the whole run, at
    --feed-rps: a warm-up and every round, each run also opening (and evening out) its
    connections with requests of the feed."""
    timed = (WARMUP_SECONDS + args.rounds * args.seconds) * args.feed_rps
    opening = (1 + args.rounds) * (args.connections + loadgen.MAX_REOPENS)
    return math.ceil(timed) + opening


def _measure(
    server: GunicornServer,
    feed: loadgen.RequestFeed,
    marker: bytes | None,
    seconds: float,
    connections: int,
) -> loadgen.Sample:
    return loadgen.measure(
        HOST,
        server.port,
        feed,
        seconds=seconds,
        connections=connections,
        marker=marker,
        owners=server.connections_by_worker,
    )


def _round_plan() -> list[tuple[str, str, Endpoint | Reference]]:
    """(row name, server name, what is measured) in the order of a round: the peers spread
    between our endpoints, so that none always runs right after the same one."""
    ours = [(endpoint.name, "ours", endpoint) for endpoint in ENDPOINTS]
    peers = [(peer.name, peer.server, peer) for peer in REFERENCES]
    plan: list[tuple[str, str, Endpoint | Reference]] = []
    for index, step in enumerate(ours):
        if index < len(peers):
            plan.append(peers[index])
        plan.append(step)
    return plan + peers[len(ours) :]


def _run_rounds(
    servers: dict[str, GunicornServer],
    targets: dict[str, Target],
    state: State,
    args: argparse.Namespace,
) -> tuple[dict[str, list[loadgen.Sample]], dict[str, int]]:
    """Warm up, then every round measures each of our endpoints and each peer once, in
    `_round_plan`'s order, reversed every other round. Returns samples by row name, and by
    endpoint name how many requests our app's feed handed out again after its last one
    (repeats)."""
    plan = _round_plan()
    feeds = {name: measured.feed(targets[server], state) for name, server, measured in plan}
    markers = {name: getattr(measured, "marker", None) for name, _, measured in plan}
    samples: dict[str, list[loadgen.Sample]] = {name: [] for name, _, _ in plan}
    for name, server, _ in plan:  # workers import lazily and fill caches on first use
        _measure(servers[server], feeds[name], markers[name], WARMUP_SECONDS, args.connections)
    for round_index in range(args.rounds):
        for name, server, _ in plan if round_index % 2 == 0 else plan[::-1]:
            sample = _measure(
                servers[server], feeds[name], markers[name], args.seconds, args.connections
            )
            samples[name].append(sample)
            print(
                f"  round {round_index + 1}/{args.rounds}  {name:<46} {sample.rps:8.1f} rps",
                flush=True,
            )
    wrapped = {endpoint.name: feeds[endpoint.name].wrapped for endpoint in ENDPOINTS}
    return samples, wrapped


def _rows(samples: dict[str, list[loadgen.Sample]]) -> list[report.Row]:
    """Our endpoints, each judged against the peers' numbers of the same run, then the peers."""
    peers = {peer.key: report.summarize(samples[peer.name], 200) for peer in REFERENCES}
    rows = []
    for endpoint in ENDPOINTS:
        if endpoint.webhook:
            ours = report.summarize(samples[endpoint.name], endpoint.ok_status)
            verdict = report.judge(ours, peers, TUTORIAL)
            rows.append(report.Row(endpoint.name, ours, verdict))
        else:
            ours = report.summarize_check(samples[endpoint.name])
            rows.append(report.Row(endpoint.name, ours, None, kind="api"))
    for peer in REFERENCES:
        rows.append(report.Row(peer.name, peers[peer.key], None, kind="reference"))
    return rows


def _notes(rows: Sequence[report.Row], state: State, wrapped: dict[str, int]) -> list[str]:
    notes = []
    for row in rows:
        if row.endpoint == "/voice/incoming":
            new, answered = row.ours["marked"], row.ours["requests"]
            notes.append(
                f"incoming: {new} of {answered} answers started a new call (welcome, language "
                f"question, call state saved), each request with a CallSid of its own "
                f"({state.incoming_calls} built)"
                + (
                    f"; {answered - new} did not: "
                    + (
                        f"the feed wrapped ({wrapped[row.endpoint]} requests, warm-up "
                        "included, repeated a CallSid: 'Twilio asked again')"
                        if wrapped[row.endpoint]
                        else "none repeated a CallSid, so these are errors or fallbacks"
                    )
                    if new < answered
                    else ""
                )
            )
        if row.endpoint.startswith("/voice/flow/"):
            real, answered = row.ours["marked"], row.ours["requests"]
            notes.append(
                f"menu: {real} of {answered} answers were real menu steps (the menu asked "
                f"anew, the step bumped), round-robin over {len(state.flow_calls)} calls x "
                f"{state.menu_steps} steps ({ENGLISH} for English at step 1, then "
                f"{MENU_AGAIN} to hear the options again)"
                + (
                    f"; {answered - real} were not: "
                    + (
                        f"the feed wrapped ({wrapped[row.endpoint]} requests, warm-up "
                        "included, replayed a step: the question repeated)"
                        if wrapped[row.endpoint]
                        else "the feed did not wrap, so these are replays of a raced step, "
                        "errors or fallbacks"
                    )
                    if real < answered
                    else ""
                )
            )
        if row.endpoint.endswith("/reveal"):
            heard, answered = row.ours["marked"], row.ours["requests"]
            notes.append(
                f"reveal: {heard} of {answered} answers read the code, spread over "
                f"{len(state.calls)} calls"
                + (
                    f"; {answered - heard} came past the cap of {REVEALS_PER_CALL} per call "
                    "('no longer available')"
                    if heard < answered
                    else ""
                )
            )
        if row.endpoint.endswith("/check"):
            notes.append(
                f"check: 200 while a verification takes wrong codes (up to {OTP_MAX_ATTEMPTS} "
                f"each, {len(state.check_sids)} verifications), 409 once it is used up"
            )
    if any(row.endpoint.startswith("/voice/status") for row in rows):
        notes.append("status: our app answers 204 (no TwiML), so 204 counts as success there")
    notes.extend(_slow_machine_rounds(rows))
    return notes


def _slow_machine_rounds(rows: Sequence[report.Row]) -> list[str]:
    """Rounds in which the peers, which do not change between runs, were slow as well: the
    machine was (a noisy neighbour), which a slow round of ours then may owe to it too."""
    peers = [row.ours for row in rows if row.kind == "reference"]
    notes = []
    for index in range(min((len(peer["rps_rounds"]) for peer in peers), default=0)):
        slowest = min(peer["rps_rounds"][index] / peer["rps"] for peer in peers if peer["rps"])
        if slowest < SLOW_PEER:
            notes.append(
                f"round {index + 1}: a peer ran at {slowest:.2f} of its median too (the "
                "machine was slower then, not only our app)"
            )
    return notes


def _document(
    args: argparse.Namespace,
    rows: Sequence[report.Row],
    notes: list[str],
    state: State,
    *,
    redis: str,
) -> dict[str, Any]:
    """The JSON written to bench/results: settings, every number, the verdicts and notes."""
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rounds": args.rounds,
            "seconds_per_run": args.seconds,
            "connections": args.connections,
            "redis": redis,
            **{key.lower(): int(value) for key, value in _concurrency().items()},
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "call_verifications": len({call.sid for call in state.calls}),
            "calls": len(state.calls),
            "check_verifications": len(state.check_sids),
            "feed_rps": args.feed_rps,
            "incoming_calls": state.incoming_calls,
            "menu_calls": len(state.flow_calls),
            "menu_steps_per_call": state.menu_steps,
        },
        "targets": {
            "min_ratio": report.MIN_RATIO,
            "ratio_to": TUTORIAL,
            "max_p99_ms": report.MAX_P99_MS,
            "min_steady": report.MIN_STEADY,
            "errors": 0,
        },
        "endpoints": [
            {"endpoint": row.endpoint, "kind": row.kind, **row.ours, **(row.verdict or {})}
            for row in rows
        ],
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the verdicts, 1 only when a server failed to start (or our
    app refused to create the benchmark's state)."""
    args = _parse_args(argv)
    _size_pools(args)
    started = time.monotonic()
    store = _server_redis() if args.redis == "auto" else None
    redis_url = SERVER_REDIS_URL if store else None
    print(
        f"bench: redis {'server ' + SERVER_REDIS_URL if store else 'embedded'}, "
        f"{args.rounds} rounds x {args.seconds:g} s, {args.connections} connections",
        flush=True,
    )
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ivr-bench-") as tmp,
            _servers(Path(tmp), redis_url) as started_servers,
        ):
            # Without a Twilio account the app signs and checks webhooks with a development token
            # it generated into its instance folder at start.
            webhook_token = (Path(tmp) / "instance" / "webhook_auth_token").read_text().strip()
            servers = {server.name: server for server in started_servers}
            targets = {
                name: Target(HOST, server.port, webhook_token, API_TOKEN, name == "ours")
                for name, server in servers.items()
            }
            prepared = time.monotonic()
            state = prepare_state(
                targets["ours"],
                call_numbers=args.call_numbers,
                sends_per_number=args.sends_per_number,
                check_numbers=args.check_numbers,
                menu_calls=args.menu_calls,
                requests_per_feed=_requests_per_feed(args),
                connections=args.connections,
            )
            print(
                f"bench: {len(state.calls)} calls for {args.call_numbers} verifications and "
                f"{len(state.check_sids)} verifications to check, made through the API, and "
                f"{len(state.flow_calls)} inbound calls answered, in "
                f"{time.monotonic() - prepared:.1f} s",
                flush=True,
            )
            samples, wrapped = _run_rounds(servers, targets, state, args)
    except ServerFailed as exc:
        print(f"bench: a server failed to start: {exc}", file=sys.stderr)
        return 1
    except SetupError as exc:
        print(f"bench: our app refused the benchmark's state: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.flushdb()
            store.close()

    rows = _rows(samples)
    notes = _notes(rows, state, wrapped)
    print()
    print(report.render_table(rows, args.connections, [peer.key for peer in REFERENCES]))
    for note in notes:
        print(f"  {note}")
    document = _document(args, rows, notes, state, redis="server" if store else "embedded")
    if args.capacity_at:
        found = capacity.report(args.capacity_at, args.fill)
        print()
        for line in capacity.render(found, args.capacity_at):
            print(f"  {line}")
        document["capacity"] = found
    # Seconds of prompts and answers on the default flow's main paths, and the time to the
    # code per locale: from the TwiML the app serves (issue 14's caller targets).
    heard = caller_time.measure()
    print()
    for line in caller_time.render(heard):
        print(line)
    document["caller_time"] = heard
    document["duration_seconds"] = round(time.monotonic() - started, 1)
    report.write_json(args.output, document)
    print(f"\nbench: {document['duration_seconds']} s; results in {args.output}")
    return 0
