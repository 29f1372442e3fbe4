"""`make soak`: N simulated inbound calls at once, each through the whole default flow at a
human pace, for M minutes, against gunicorn started as `make run` starts it.

A call: /voice/incoming -> language (1) -> main menu (1: account help) -> the caller is
identified by caller ID, a code goes by SMS to the phone on file -> the code typed -> the
hand-off to an agent. Each caller waits 2-5 s (random) before each key press. Webhooks are
signed with twilio's RequestValidator and the app's webhook auth token; the code is read from
the simulated carrier's outbox by the carrier's own reader (the SMS bodies are sealed there).

Reports calls started and completed, errors (a non-2xx, TwiML other than the flow's next
step, an apology), webhook latency p50/p99 overall and per step, the app's memory and Redis's
over time, and whether each is flat after warm-up (see soak_memory.flatness).

    python -m bench.soak --calls 1000 --minutes 5 --ramp-seconds 30 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from bench import report
from bench.loadgen import encode_post, fetch_all
from bench.servers import (
    HOST,
    GunicornServer,
    ServerFailed,
    clean_environment,
    stop_embedded_redis,
)
from bench.soak_calls import STEPS, Caller, Customer, Tally, run_slot
from bench.soak_memory import FLAT_SHARE, Watch, busy_by_window, flatness, key_census
from bench.soak_metrics import app_side
from bench.workload import test_numbers
from ivr.config import DEFAULT_PROMPTS_DIR
from ivr.prompts import load_catalogs
from ivr.store import EmbeddedRedis, RedisClient, cluster_seeds
from ivr.telephony import SimulatedCarrier
from ivr.verification.codes import CodeSecrets

API_TOKEN = "soak-api-token-0123456789abcdef"
APP_NAME = "IVR"
# The soak measures capacity, not the send limiter: one customer is called every ~15 s, far
# past 5 codes per number (and 30 per prefix) in 10 minutes.
RELAXED_LIMIT = "1000000/1h"
MAX_P99_MS = 100.0
PROGRESS_SECONDS = 30.0
WINDOW_SECONDS = 30.0  # latency and CPU are also reported per window of this length
CUSTOMER_IDS_FROM = 70_000_000


def _pause(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        pause = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds as LOW-HIGH, e.g. 2-5") from None
    if not 0 <= pause[0] <= pause[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: 0 <= LOW <= HIGH")
    return pause


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak test: concurrent paced calls through the default IVR flow.",
    )
    parser.add_argument("--calls", type=int, default=100, help="calls at once (one customer each)")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long new calls start")
    parser.add_argument(
        "--ramp-seconds", type=float, default=10.0, help="the calls' first starts spread over this"
    )
    parser.add_argument(
        "--pause-seconds",
        type=_pause,
        default=(2.0, 5.0),
        metavar="LOW-HIGH",
        help="a caller's pause before each key press, uniform at random (default 2-5)",
    )
    parser.add_argument(
        "--redis-url",
        help="redis://host:port/db (not DB 0) or redis+cluster://host:port[,…]; FLUSHED before "
        "and after. Default: the embedded Redis, as `make run` starts it",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY, default 2)"
    )
    parser.add_argument("--json", type=Path, help="write the machine-readable report here")
    parser.add_argument("--seed", type=int, default=1, help="for the pauses and ramp")
    parser.add_argument(
        "--sample-seconds", type=float, default=5.0, help="memory sampled this often"
    )
    parser.add_argument(
        "--new-connection-per-request",
        action="store_true",
        help="no keep-alive: each webhook opens a connection of its own (default: a shared "
        "pool of keep-alive connections, as a proxy in front would keep)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="after the last start, calls in progress get this long to finish",
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be 1 or more")
    try:
        test_numbers(args.calls)
    except ValueError as exc:
        parser.error(f"--calls: {exc}")
    if args.minutes <= 0 or args.ramp_seconds < 0 or args.sample_seconds <= 0:
        parser.error("--minutes and --sample-seconds must be > 0, --ramp-seconds >= 0")
    return args


# -- Redis ----------------------------------------------------------------------------------------


def _plain_client(url: str) -> RedisClient:
    """A client of the soak's own (never the app's timed one): a cluster's too."""
    options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 10}
    if url.partition("://")[0].lower() in ("redis+cluster", "rediss+cluster"):
        nodes, credentials = cluster_seeds(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            ssl=url.lower().startswith("rediss"),
            **credentials,
            **options,
        )
    return redis.Redis.from_url(url, **options)


def _flushable(url: str) -> RedisClient:
    """A client for the Redis the user named, refused on DB 0 (the soak flushes it)."""
    client = _plain_client(url)
    if isinstance(client, redis.Redis):
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        if db == 0:
            client.close()
            raise SystemExit("soak: --redis-url must name a DB of its own (not 0): it is flushed")
    return client


def _redis_pids(client: RedisClient) -> list[int]:
    """The redis-server processes behind `client`, when they run on this machine."""
    try:
        if isinstance(client, RedisCluster):
            infos = client.info("server", target_nodes=RedisCluster.ALL_NODES).values()
        else:
            infos = [client.info("server")]
    except redis.RedisError:
        return []
    pids = []
    for info in infos:
        pid = int(info.get("process_id", 0))
        with contextlib.suppress(OSError):
            if b"redis" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


# -- the server and its customers --------------------------------------------------------------


def _server(workdir: Path, redis_url: str | None, workers: int, secret_key: str) -> GunicornServer:
    """Our app as `make run` serves it (its gunicorn config, access log included), on a free
    loopback port, with the simulated carrier and the soak's tokens."""
    server = GunicornServer(
        "ivr", "ivr:create_app()", clean_environment(), workdir / "ivr.log", access_log=True
    )
    port = server.port
    server.env |= {
        "IVR_STOP_WITH_PARENT": "1",  # as `make run`: it stops if the soak dies
        "INSTANCE_PATH": str(workdir / "instance"),
        "HOST": HOST,
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://{HOST}:{port}",
        "WEB_CONCURRENCY": str(workers),
        "IVR_API_TOKEN": API_TOKEN,
        "SECRET_KEY": secret_key,
        "APP_NAME": APP_NAME,
        "SEND_LIMIT_PER_NUMBER": RELAXED_LIMIT,
        "SEND_LIMIT_PER_PREFIX": RELAXED_LIMIT,
        "SEND_LIMIT_PER_TOKEN": RELAXED_LIMIT,
    }
    if os.environ.get("GUNICORN_THREADS"):
        server.env["GUNICORN_THREADS"] = os.environ["GUNICORN_THREADS"]
    if redis_url:
        server.env["REDIS_URL"] = redis_url
    return server


def _app_log(server: GunicornServer, lines: int = 40) -> str:
    """The last lines the app logged that are not access lines (those quote the request)."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if ' "POST /' not in line and ' "GET /' not in line]
    return "\n".join(kept[-lines:])


def _scrape_metrics(server: GunicornServer) -> dict[str, Any]:
    """The app's own timings from GET /metrics (loopback needs no METRICS_TOKEN)."""
    request = f"GET /metrics HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n\r\n".encode()
    [answer] = fetch_all(HOST, server.port, [request], connections=1)
    if answer.status != 200:
        return {"unavailable": f"HTTP {answer.status}"}
    return app_side(answer.body.decode("utf-8", "replace"))


def _create_customers(server: GunicornServer, count: int) -> list[Customer]:
    """One customer per concurrent call, each with a phone of its own, through PUT
    /v1/customers/<id>, so every call is a known caller."""
    customers = [
        Customer(str(CUSTOMER_IDS_FROM + index), number)
        for index, number in enumerate(test_numbers(count))
    ]
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    requests = [
        encode_post(
            HOST,
            server.port,
            f"/v1/customers/{customer.id}",
            json.dumps({"phone": customer.phone, "name": f"Soak caller {index}"}).encode(),
            "application/json",
            headers,
            method="PUT",
        )
        for index, customer in enumerate(customers)
    ]
    for customer, answer in zip(
        customers, fetch_all(HOST, server.port, requests, connections=8), strict=True
    ):
        if answer.status not in (200, 201):
            raise ServerFailed(
                f"customer {customer.id}: HTTP {answer.status} {answer.body[:300]!r}"
            )
    return customers


# -- the run ------------------------------------------------------------------------------------


async def _every(seconds: float, action: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        await action()


async def _soak(
    args: argparse.Namespace,
    caller: Caller,
    customers: list[Customer],
    watch: Watch,
    tally: Tally,
) -> list[float]:
    """Run the calls; returns the event loop's lateness samples (seconds), which say how much
    of a measured latency the load driver itself may have added."""
    rng = random.Random(args.seed)
    began = time.monotonic()
    stop_starting = began + args.minutes * 60
    lateness: list[float] = []

    async def take_sample() -> None:
        await asyncio.to_thread(watch.take, tally.active, tally.completed)

    async def tick() -> None:
        while True:
            due = time.monotonic() + 0.1
            await asyncio.sleep(0.1)
            lateness.append(max(0.0, time.monotonic() - due))

    seen = 0

    async def progress() -> None:
        nonlocal seen
        recent = [latency for _, _, latency in tally.requests[seen:]]
        seen = len(tally.requests)
        print(
            f"soak: {time.monotonic() - began:5.0f} s, {tally.active} calls in progress, "
            f"{tally.completed} completed, {tally.failed} failed; last "
            f"{PROGRESS_SECONDS:.0f} s: p99 {_latency(recent)['p99_ms']} ms",
            flush=True,
        )

    await take_sample()
    watch.start()
    background = [
        asyncio.create_task(_every(args.sample_seconds, take_sample)),
        asyncio.create_task(_every(PROGRESS_SECONDS, progress)),
        asyncio.create_task(tick()),
    ]
    slots = [
        asyncio.create_task(
            run_slot(
                caller,
                customer,
                random.Random(rng.random()),
                start_in=args.ramp_seconds * index / len(customers),
                stop_starting_at=stop_starting,
            )
        )
        for index, customer in enumerate(customers)
    ]
    drain_until = stop_starting + args.drain_seconds
    _, pending = await asyncio.wait(slots, timeout=max(0.0, drain_until - time.monotonic()))
    for task in pending:  # still in a call when the drain deadline passed
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in slots:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug in the driver, not the app
    watch.stop()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await take_sample()
    caller.close()
    return lateness


# -- the report ------------------------------------------------------------------------------


def _latency(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "requests": len(ordered),
        "mean_ms": round(1000 * sum(ordered) / len(ordered), 2) if ordered else 0.0,
        "p50_ms": round(report.percentile(ordered, 0.50) * 1000, 1),
        "p99_ms": round(report.percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 1),
    }


def _windows(tally: Tally, seconds: float) -> list[dict[str, Any]]:
    """Latency per window of time: a slowdown as the soak goes on shows here."""
    by_window: dict[int, list[float]] = {}
    for at, _, latency in tally.requests:
        by_window.setdefault(int(at // seconds), []).append(latency)
    return [
        {"from_s": index * seconds, **_latency(values)}
        for index, values in sorted(by_window.items())
    ]


def _document(
    args: argparse.Namespace,
    tally: Tally,
    watch: Watch,
    lateness: list[float],
    *,
    redis_backend: str,
    connections: int,
    seconds: float,
    censuses: tuple[dict[str, Any], dict[str, Any]],
) -> dict[str, Any]:
    latencies = [latency for _, _, latency in tally.requests]
    per_step = {
        step.name: _latency([latency for _, name, latency in tally.requests if name == step.name])
        for step in STEPS
    }
    overall = _latency(latencies)
    retained = _retained(censuses, tally.completed, seconds)
    per_call = retained["expiring_bytes_per_completed_call"]
    # Judged while new calls start: in the drain, the calls in progress end and take their
    # live state with them, which is no leak and no warm-up.
    steady = [s for s in watch.samples if s.seconds <= args.minutes * 60]
    memory = {
        "app_rss": flatness(steady, lambda s: s.app_rss),
        "app_pss": flatness(steady, lambda s: s.app_pss),
        "redis_used_memory": flatness(steady, lambda s: s.redis_used_memory),
        # Two-sided: a working set that shrinks would say the census over-counts the records.
        # Compared with used_memory: a leak of a fifth of what a call keeps on purpose shows.
        "redis_working_set": flatness(
            steady,
            lambda s: round(s.redis_used_memory - per_call * s.completed_calls),
            two_sided=True,
            level_of=lambda s: s.redis_used_memory,
        ),
        "redis_keys": flatness(steady, lambda s: s.redis_keys),
        "redis_keys_without_expiry": flatness(steady, lambda s: s.redis_keys_without_expiry),
    }
    first, last = watch.samples[0], watch.samples[-1]
    grown = last.redis_used_memory - first.redis_used_memory
    errors = sum(tally.errors.values()) + tally.unfinished
    all_completed = tally.completed == tally.started and tally.started > 0
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "calls": args.calls,
            "minutes": args.minutes,
            "ramp_seconds": args.ramp_seconds,
            "pause_seconds": list(args.pause_seconds),
            "workers": args.workers,
            "threads": int(os.environ.get("GUNICORN_THREADS", "4")),
            "redis": redis_backend,
            "seed": args.seed,
            "keep_alive": not args.new_connection_per_request,
            "cpus": os.cpu_count(),
            "steps": [step.name for step in STEPS],
        },
        "seconds": round(seconds, 1),
        "calls": {
            "started": tally.started,
            "completed": tally.completed,
            "failed": tally.failed,
            "unfinished": tally.unfinished,
            "per_second": round(tally.completed / seconds, 1) if seconds else 0.0,
        },
        "errors": errors,
        "error_kinds": dict(tally.errors.most_common()),
        "error_examples": tally.examples,
        "latency": {**overall, "per_step": per_step, "over_time": _windows(tally, WINDOW_SECONDS)},
        "webhooks_per_second": round(len(latencies) / seconds, 1) if seconds else 0.0,
        "connections_opened": connections,
        "driver_lateness_ms": _latency(lateness),
        "cpu": watch.cpu,
        "cpu_over_time": busy_by_window(watch.samples, WINDOW_SECONDS),
        "memory": memory,
        "redis_bytes_per_completed_call": round(grown / tally.completed) if tally.completed else 0,
        "redis_retained": retained,
        "memory_rule": (
            "flat when a line fitted to the last third of the samples grows, over that third, "
            f"by less than {FLAT_SHARE:.0%} of the series' mean there, while new calls start "
            "(the drain left out); Redis is judged on its "
            "working set (used_memory less the bytes completed calls left in keys that expire, "
            "measured by a census of every key) and on its keys without an expiry"
        ),
        "samples": watch.series(),
        "targets": {
            "all_completed": all_completed,
            "zero_errors": errors == 0,
            f"p99_under_{MAX_P99_MS:.0f}ms": overall["p99_ms"] < MAX_P99_MS,
            "app_memory_flat": memory["app_rss"]["flat"],
            "redis_memory_flat": _both(
                memory["redis_working_set"]["flat"], memory["redis_keys_without_expiry"]["flat"]
            ),
        },
    }


def _retained(
    censuses: tuple[dict[str, Any], dict[str, Any]], completed: int, seconds: float
) -> dict[str, Any]:
    """What the calls left in Redis, from the censuses before and after them: bytes per
    completed call in keys that expire (the records kept on purpose), the kinds of key that
    grew, and their longest time to live, which is when the growth is given back."""
    before, after = censuses
    grew = {}
    for shape, group in after["groups"].items():
        earlier = before["groups"].get(shape, {"keys": 0, "bytes": 0})
        if group["keys"] > earlier["keys"]:
            grew[shape] = {
                "keys": group["keys"] - earlier["keys"],
                "bytes": group["bytes"] - earlier["bytes"],
                "expires": group["expiring_keys"] == group["keys"],
                "max_ttl_s": group["max_ttl_s"],
            }
    expiring = after["expiring_bytes"] - before["expiring_bytes"]
    return {
        "expiring_bytes_per_completed_call": round(expiring / completed) if completed else 0,
        "persistent_keys_before": before["persistent_keys"],
        "persistent_keys_after": after["persistent_keys"],
        "persistent_bytes_before": before["persistent_bytes"],
        "persistent_bytes_after": after["persistent_bytes"],
        # The kinds with a key per call or so; the rest are single keys of a fixed size.
        # Where used_memory levels off at this pace: each kind's bytes per call, times calls
        # per second, times how long it is kept.
        "plateau_bytes_at_this_pace": round(
            sum(g["bytes"] * g["max_ttl_s"] for g in grew.values() if g["keys"] * 10 >= completed)
            / seconds
        )
        if seconds
        else 0,
        "given_back_within_s": max(
            (g["max_ttl_s"] for g in grew.values() if g["keys"] * 10 >= completed), default=0
        ),
        "grew": dict(sorted(grew.items(), key=lambda item: -item[1]["bytes"])[:12]),
    }


def _both(*verdicts: bool | None) -> bool | None:
    return None if None in verdicts else all(verdicts)


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def render(document: dict[str, Any]) -> str:
    """The text summary printed at the end."""
    calls, latency, cpu = document["calls"], document["latency"], document["cpu"]
    lines = [
        f"soak: {document['config']['calls']} calls at once for "
        f"{document['config']['minutes']:g} min ({document['seconds']} s with the drain), "
        f"redis {document['config']['redis']}, {document['config']['workers']} workers",
        f"calls: {calls['started']} started, {calls['completed']} completed, "
        f"{calls['failed']} failed, {calls['unfinished']} unfinished "
        f"({calls['per_second']} completed/s; {document['webhooks_per_second']} webhooks/s)",
        f"errors: {document['errors']}"
        + "".join(f"\n  {count:>6}  {kind}" for kind, count in document["error_kinds"].items()),
        f"{'latency (ms)':<14}{'requests':>10}{'p50':>9}{'p99':>9}{'max':>9}",
    ]
    rows = [("all", latency), *latency["per_step"].items()]
    for name, row in rows:
        lines.append(
            f"{name:<14}{row['requests']:>10}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            f"{row['max_ms']:>9.1f}"
        )
    lines.append(
        "p99 by 30 s window: "
        + " ".join(f"{window['p99_ms']:.0f}" for window in latency["over_time"])
    )
    if document["cpu_over_time"]:
        lines.append(
            "machine busy by 30 s window, ours+others %: "
            + " ".join(
                f"{100 * w['ours']:.0f}+{100 * w['others']:.0f}" for w in document["cpu_over_time"]
            )
        )
    for route, row in document.get("app_side", {}).get("webhooks", {}).items():
        lines.append(
            f"  inside the app (its /metrics, coarse buckets) {route}: {row['requests']} "
            f"requests, mean {row['mean_ms']} ms, p50 ~{row['p50_ms']}, p99 ~{row['p99_ms']}"
        )
    lateness = document["driver_lateness_ms"]
    lines.append(
        f"load driver's event loop late by p50 {lateness['p50_ms']} ms, p99 "
        f"{lateness['p99_ms']} ms (part of every latency above); "
        f"{document['connections_opened']} connections opened"
    )
    if cpu:
        lines.append(
            f"cpu over {cpu['wall_seconds']} s, share of {cpu['cores']} cores: app "
            f"{cpu['app_share_of_machine']:.0%}, redis-server "
            f"{cpu['redis_server_share_of_machine']:.0%}, "
            f"load driver {cpu['load_driver_share_of_machine']:.0%}, everything else on the "
            f"machine {cpu['others_share_of_machine']:.0%}; app CPU seconds by "
            "process (master first): "
            + " ".join(f"{seconds:g}" for seconds in cpu["app_seconds_per_process"].values())
        )
    for name, label in (
        ("app_rss", "app RSS (master + workers)"),
        ("app_pss", "app PSS (master + workers)"),
        ("redis_used_memory", "Redis used_memory (with the records kept for their retention)"),
        ("redis_working_set", "Redis working set (used_memory less the retained records)"),
    ):
        series = document["memory"][name]
        if series.get("flat") is None:
            lines.append(f"{label}: {series.get('why')}")
            continue
        lines.append(
            f"{label}: {_mib(series['first'])} -> {_mib(series['last'])}; last third "
            f"{series['tail_slope_bytes_per_minute'] / 2**20:+.2f} MiB/min: "
            + ("flat" if series["flat"] else "NOT flat")
        )
    keys = document["memory"]["redis_keys"]
    persistent = document["memory"]["redis_keys_without_expiry"]
    retained = document["redis_retained"]
    if keys.get("flat") is not None:
        lines.append(
            f"Redis keys: {keys['first']} -> {keys['last']}; without an expiry "
            f"{persistent['first']} -> {persistent['last']}: "
            + ("flat" if persistent["flat"] else "NOT flat")
        )
    lines.append(
        f"Redis per completed call: {document['redis_bytes_per_completed_call']} bytes of "
        f"used_memory, {retained['expiring_bytes_per_completed_call']} in keys that expire "
        f"(all given back within {retained['given_back_within_s'] / 3600:.1f} h; at this pace "
        f"used_memory levels off near {retained['plateau_bytes_at_this_pace'] / 2**30:.1f} GiB); "
        "kinds that grew:"
    )
    for shape, group in retained["grew"].items():
        lines.append(
            f"  {group['keys']:>8} keys {group['bytes'] / 2**20:>8.1f} MiB  {shape}  "
            + (f"expire within {group['max_ttl_s']} s" if group["expires"] else "NO EXPIRY")
        )
    lines.append(f"rule: {document['memory_rule']}")
    lines.append(
        "targets: "
        + ", ".join(
            f"{name} {'PASS' if ok else ('n/a' if ok is None else 'FAIL')}"
            for name, ok in document["targets"].items()
        )
    )
    return "\n".join(lines)


@contextlib.contextmanager
def _flushed(client: RedisClient | None) -> Iterator[None]:
    if client is not None:
        client.flushdb()
    try:
        yield
    finally:
        if client is not None:
            with contextlib.suppress(redis.RedisError):
                client.flushdb()
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """0 when every call completed with no error, 1 otherwise, 2 when the server or its
    customers could not be set up. Latency and memory targets are reported, not exit codes."""
    args = _parse_args(argv)
    secret_key = secrets.token_urlsafe(32)
    users_redis = _flushable(args.redis_url) if args.redis_url else None
    backend = (
        "embedded"
        if not args.redis_url
        else "cluster"
        if isinstance(users_redis, RedisCluster)
        else "server"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ivr-soak-") as tmp, _flushed(users_redis):
        workdir = Path(tmp)
        server = _server(workdir, args.redis_url, args.workers, secret_key)
        instance = workdir / "instance"
        client: RedisClient | None = None
        try:
            server.start()
            server.wait_ready(args.workers, timeout=60)
            print(f"soak: gunicorn on {server.base_url}, {args.workers} workers", flush=True)
            client = _plain_client(args.redis_url or EmbeddedRedis(instance / "redis").url)
            customers = _create_customers(server, args.calls)
            print(f"soak: {len(customers)} customers on file, one phone each", flush=True)
            token = (instance / "webhook_auth_token").read_text().strip()
            tally = Tally()
            zero = time.monotonic()
            caller = Caller(
                base_url=server.base_url,
                auth_token=token,
                carrier=SimulatedCarrier(client, CodeSecrets(secret_key.encode())),  # type: ignore[arg-type]
                prompts=load_catalogs(DEFAULT_PROMPTS_DIR, "en-US"),
                app_name=APP_NAME,
                pause=args.pause_seconds,
                tally=tally,
                clock_zero=zero,
                reuse_connections=not args.new_connection_per_request,
            )
            master, redis_pids = server.pid, _redis_pids(client)
            watch = Watch(
                lambda: [master, *server.worker_pids()] if master else [],
                lambda: redis_pids,
                client,
                zero,
            )
            census_before = key_census(client)
            lateness = asyncio.run(_soak(args, caller, customers, watch, tally))
            seconds = time.monotonic() - zero
            census_after = key_census(client)
            inside = _scrape_metrics(server)
            if tally.failed or tally.unfinished:
                print(f"soak: the app's log, besides its access lines:\n{_app_log(server)}")
        except ServerFailed as exc:
            print(f"soak: the server failed: {exc}", file=sys.stderr)
            return 2
        finally:
            server.stop()
            if client is not None:
                client.close()
            if not args.redis_url:
                stop_embedded_redis(instance / "redis")
    document = _document(
        args,
        tally,
        watch,
        lateness,
        redis_backend=backend,
        connections=caller.connections_opened,
        seconds=seconds,
        censuses=(census_before, census_after),
    )
    document["app_side"] = inside
    document["total_seconds"] = round(time.monotonic() - started, 1)
    print(render(document))
    for example in document["error_examples"][:5]:
        print(f"  e.g. {example}")
    if args.json:
        report.write_json(args.json, document)
        print(f"soak: report in {args.json}")
    return 0 if document["targets"]["all_completed"] and document["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
