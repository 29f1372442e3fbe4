"""What the work costs in Redis as it grows: bytes per pending verification and per IVR call
state (measured at --capacity-at, 100,000 by default), what WAIT for a replica adds to a
durable write (on a 3+3 cluster started on loopback), and, with --fill, whether starting,
checking and an IVR step cost the same with 1,000 and with a million verifications kept.

    python -m bench.capacity [--at 100000] [--fill 1000000]

Each measure runs on a Redis of its own (an embedded server in a temporary folder, or the
cluster), through the project's own stores, so the figures are the app's, not a guess.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ivr.config import Rate
from ivr.flows.state import CallState, CallStateStore
from ivr.store import EmbeddedRedis, Scripts, connect
from ivr.verification.codes import CodeSecrets, generate_code
from ivr.verification.store import VerificationStore

SECRET = b"bench-capacity-secret-key-0123456789abcdef"
NO_LIMIT = Rate(1_000_000, 600)
SAMPLES = 2000


def _number(index: int) -> str:
    return f"+1650{2_000_000 + index:07d}"


def _start(store: VerificationStore, codes: CodeSecrets, index: int) -> str:
    to = _number(index)
    sid = codes.new_sid(to)
    code = generate_code(6)
    store.start_or_resend(
        new_sid=sid,
        to=to,
        channel="sms",
        locale="en-US",
        digest=codes.digest(code),
        sealed=codes.seal(sid, code),
        ttl_ms=600_000,
        retention_ms=86_400_000,
        send_limit=NO_LIMIT,
    )
    return sid


def _call_state() -> CallState:
    """A call as the default flow leaves it at its menu: a known caller, identified."""
    now = int(time.time() * 1000)
    return CallState(
        flow="default",
        node="main_menu",
        locale="en-US",
        caller="+14155550123",
        customer_id="12345678",
        customer_name="Ada Lovelace",
        customer_phone="+14155550123",
        started_at=now,
        updated_at=now,
        identified_by="caller_id",
    )


def _save_call(states: CallStateStore, call_sid: str) -> None:
    state = _call_state()
    CallStateStore.advance(state, 1)
    turn = {"at": int(time.time() * 1000), "node": "welcome", "keys": "", "said": ["flow.welcome"]}
    states.save(call_sid, state, replaces="", turn=turn)


def bytes_per(count: int, make: Callable[[int], object], client: Any) -> float:
    """Redis' used_memory grown per item, over `count` items made by `make(i)`."""
    before = int(client.info("memory")["used_memory"])
    for index in range(count):
        make(index)
    return (int(client.info("memory")["used_memory"]) - before) / count


def _p50_ms(action: Callable[[int], object], count: int = SAMPLES, offset: int = 0) -> float:
    times = []
    for index in range(count):
        started = time.perf_counter()
        action(offset + index)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@contextlib.contextmanager
def _fresh_redis() -> Iterator[Any]:
    """A client of an embedded Redis of its own, in a temporary folder, stopped after."""
    with tempfile.TemporaryDirectory(prefix="ivr-capacity-") as folder:
        embedded = EmbeddedRedis(Path(folder))
        client = connect(embedded.ensure_running())
        try:
            yield client
        finally:
            client.close()
            embedded.stop(force=True)


def memory_report(count: int) -> dict[str, float]:
    """Bytes per pending verification and per IVR call state, each measured alone."""
    found: dict[str, float] = {}
    with _fresh_redis() as client:
        codes = CodeSecrets(SECRET)
        store = VerificationStore(client)
        found["bytes_per_pending_verification"] = bytes_per(
            count, lambda i: _start(store, codes, i), client
        )
        client.flushall()
        states = CallStateStore(client, 4 * 3600, SECRET)
        found["bytes_per_call_state"] = bytes_per(
            count, lambda i: _save_call(states, f"CA{i:032x}"), client
        )
    return found


def wait_report() -> dict[str, float]:
    """What WAIT for one replica adds to a durable write (a start: it counts a send), on a
    3-master, 3-replica cluster on loopback: the median with and without it."""
    from tests.redis_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="ivr-capacity-cluster-") as folder:
        cluster = LocalCluster(Path(folder)).start()
        try:
            client = connect(cluster.url)
            codes = CodeSecrets(SECRET)
            without = VerificationStore(client, scripts=Scripts(client, replicas=0))
            waiting = VerificationStore(client, scripts=Scripts(client, replicas=1))
            _p50_ms(lambda i: _start(without, codes, i), 200)  # warm the connections
            plain = _p50_ms(lambda i: _start(without, codes, i), offset=1000)
            durable = _p50_ms(lambda i: _start(waiting, codes, i), offset=10_000)
            client.close()
        finally:
            cluster.stop()
    return {"durable_write_p50_ms": durable, "without_wait_p50_ms": plain}


def growth_report(target: int) -> dict[str, float]:
    """Start, check and an IVR step, median ms, with 1,000 verifications kept and with
    `target`: the same when nothing scans what it does not need."""
    with _fresh_redis() as client:
        codes = CodeSecrets(SECRET)
        store = VerificationStore(client)
        states = CallStateStore(client, 4 * 3600, SECRET)
        for index in range(1000):
            _start(store, codes, index)
        small = _costs(store, codes, states, 5_000_000)
        for index in range(1000, target):
            _start(store, codes, index)
        large = _costs(store, codes, states, 6_000_000)
    return {f"{name}_p50_ms_at_1000": value for name, value in small.items()} | {
        f"{name}_p50_ms_at_{target}": value for name, value in large.items()
    }


def _costs(
    store: VerificationStore, codes: CodeSecrets, states: CallStateStore, offset: int
) -> dict[str, float]:
    sids: list[str] = []
    start = _p50_ms(lambda i: sids.append(_start(store, codes, i)), offset=offset)
    wrong = codes.digest("not-a-code")
    check = _p50_ms(
        lambda i: store.check(
            digest=wrong, max_attempts=99, failure_budget=NO_LIMIT, sid=sids[i % len(sids)]
        )
    )
    for index in range(SAMPLES):
        _save_call(states, f"CA{offset + index:032x}")

    def step(index: int) -> None:
        call_sid = f"CA{offset + index:032x}"
        state = states.load(call_sid)
        assert state is not None
        replaced = CallStateStore.advance(state, state.step + 1)
        states.save(call_sid, state, replaces=replaced)

    return {"start": start, "check": check, "ivr_step": _p50_ms(step)}


def report(at: int, fill: int | None) -> dict[str, float]:
    found = memory_report(at) | wait_report()
    if fill:
        found |= growth_report(fill)
    return found


def render(found: dict[str, float], at: int) -> list[str]:
    lines = [
        f"Redis per pending verification (code, pointer, limits): "
        f"{found['bytes_per_pending_verification']:.0f} B, measured at {at:,}",
        f"Redis per IVR call state (state and journey): "
        f"{found['bytes_per_call_state']:.0f} B, measured at {at:,}",
        f"a durable write (WAIT for one replica) p50 {found['durable_write_p50_ms']:.3f} ms, "
        f"without WAIT {found['without_wait_p50_ms']:.3f} ms (3+3 cluster on loopback)",
    ]
    kept = sorted({int(name.rsplit("_", 1)[1]) for name in found if "_p50_ms_at_" in name} - {1000})
    for target in kept:
        for name in ("start", "check", "ivr_step"):
            small, large = found[f"{name}_p50_ms_at_1000"], found[f"{name}_p50_ms_at_{target}"]
            lines.append(
                f"{name}: p50 {small:.3f} ms with 1,000 kept, {large:.3f} ms with {target:,}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--at", type=int, default=100_000, help="items for the memory figures")
    parser.add_argument("--fill", type=int, default=None, help="verifications kept, e.g. 1000000")
    args = parser.parse_args(argv)
    found = report(args.at, args.fill)
    for line in render(found, args.at):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
