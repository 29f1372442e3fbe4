"""What the soak watches besides latency: the app's memory (gunicorn master + workers, read from
/proc), Redis's used_memory and key count, and the CPU each side used, sampled every few
seconds; and the rule that says whether a series is flat after warm-up.

Why Redis is judged on its working set: every call leaves records that are kept on purpose and
expire (a verification 24 h after its end, a call's state and journey 4 h after its last step),
so Redis's used_memory grows with every completed call for the length of those retentions,
then levels off. A soak of minutes cannot wait 24 hours for that plateau. What it can tell
apart is a leak: keys with no expiry that keep coming (counted from INFO keyspace at every
sample), or memory that grows beyond what the retained records explain. So a census of every
key (MEMORY USAGE and PTTL, by key shape) before and after the calls measures the bytes each
completed call leaves in keys that expire, and the working set at each sample is used_memory
less those bytes times the calls completed by then: that is the series that must be flat.

Why RSS and PSS: RSS summed over forked workers counts the pages they still share with the
master once per process (what `ps` users add up); PSS splits shared pages between them, so its
sum is what the app really holds. A leak shows in both.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster

from ivr.store import RedisClient

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Flat: at the last third's pace, the series grows by less than this share of its level over
# the last third. No absolute floor: Redis starts near 1 MiB, and a floor would hide its growth.
FLAT_SHARE = 0.05


@dataclass(frozen=True)
class MemorySample:
    seconds: float  # since the soak began
    app_rss: int  # bytes, master + workers
    app_pss: int  # bytes, master + workers (0 where smaps_rollup is unreadable)
    app_processes: int
    redis_used_memory: int  # bytes, summed over a cluster's masters
    redis_keys: int
    active_calls: int
    redis_keys_without_expiry: int = 0  # INFO keyspace: keys - expires
    completed_calls: int = 0
    machine_cpu_seconds: float = 0.0  # cumulative, every process on the machine
    soak_cpu_seconds: float = 0.0  # cumulative, the app, its Redis and the load driver


def _rss(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * _PAGE


def _pss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes used so far (the ones still there)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def machine_busy_seconds() -> float:
    """CPU time every process on the machine used so far (all cores, idle and iowait left
    out): beside ours, it shows how much the neighbours took while the soak ran."""
    with contextlib.suppress(OSError, ValueError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / _TICKS  # user..steal; guest is inside user
    return 0.0


def _keyspace(info: dict[str, Any]) -> tuple[int, int]:
    """(keys, keys with an expiry) of INFO's keyspace section, every DB of one node."""
    keys = expires = 0
    for name, value in info.items():
        if name.startswith("db") and isinstance(value, dict):
            keys += int(value.get("keys", 0))
            expires += int(value.get("expires", 0))
    return keys, expires


def redis_memory(client: RedisClient) -> tuple[int, int, int]:
    """(used_memory in bytes, number of keys, keys without an expiry): a cluster's masters
    summed. A plain client counts its own DB only (the server may hold others)."""
    if isinstance(client, RedisCluster):
        infos = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        used = sum(int(info["used_memory"]) for info in infos.values())
        spaces = client.info("keyspace", target_nodes=RedisCluster.PRIMARIES)
        counted = [_keyspace(info) for info in spaces.values()]
        keys = sum(k for k, _ in counted)
        return used, keys, keys - sum(e for _, e in counted)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    space = client.info("keyspace").get(f"db{db}", {})
    keys, expires = int(space.get("keys", 0)), int(space.get("expires", 0))
    return int(client.info("memory")["used_memory"]), keys, keys - expires


def sample(
    app_pids: Sequence[int], client: RedisClient, seconds: float, active: int, completed: int
) -> MemorySample:
    """One sample now; processes that exited since their pids were read are left out."""
    rss = pss = count = 0
    for pid in app_pids:
        with contextlib.suppress(OSError, ValueError):
            rss += _rss(pid)
            pss += _pss(pid)
            count += 1
    used, keys, persistent = redis_memory(client)
    return MemorySample(seconds, rss, pss, count, used, keys, active, persistent, completed)


# MEMORY USAGE counts a key's value, its name and its entry in the main table, not its entry
# in the table of expiries (24 bytes on 64-bit Redis 7) nor the two tables' bucket slots (8
# bytes each at a load of one): added per expiring key so the census matches used_memory.
_EXPIRY_OVERHEAD_BYTES = 40
_BUCKET = re.compile(r"\{v[0-9a-f]{2}\}")
_ID = re.compile(r"(?<![0-9a-zA-Z])(VE|CA|EV|SK|VA)?[0-9a-f]{8,}")
_NUMBER = re.compile(r"\d+")


def key_shape(key: str) -> str:
    """A key with its bucket, ids and numbers blanked, so the census groups keys of a kind."""
    key = _BUCKET.sub("{v<bucket>}", key)
    key = _ID.sub(lambda m: (m.group(1) or "") + "<id>", key)
    return _NUMBER.sub("<n>", key)


def key_census(client: RedisClient, batch: int = 1000) -> dict[str, Any]:
    """Every key's bytes and time to live, grouped by shape: what the calls left, and whether
    each kind expires. One pass of SCAN with MEMORY USAGE and PTTL in pipelines of `batch`;
    seconds for a few hundred thousand keys, so it runs only before and after the calls."""
    groups: dict[str, dict[str, Any]] = {}
    names: list[str] = []

    def measure() -> None:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
            pipe.pttl(name)
        answers = pipe.execute(raise_on_error=False)
        for name, size, ttl in zip(names, answers[::2], answers[1::2], strict=True):
            if not isinstance(size, int) or not isinstance(ttl, int) or ttl == -2:
                continue  # gone between SCAN and the pipeline
            group = groups.setdefault(
                key_shape(name),
                {"keys": 0, "bytes": 0, "expiring_keys": 0, "expiring_bytes": 0, "max_ttl_s": 0},
            )
            group["keys"] += 1
            group["bytes"] += size
            if ttl >= 0:
                group["expiring_keys"] += 1
                group["expiring_bytes"] += size + _EXPIRY_OVERHEAD_BYTES
                group["max_ttl_s"] = max(group["max_ttl_s"], round(ttl / 1000))
        names.clear()

    for name in client.scan_iter(count=batch):
        names.append(name)
        if len(names) >= batch:
            measure()
    if names:
        measure()
    return {
        "expiring_bytes": sum(g["expiring_bytes"] for g in groups.values()),
        "persistent_bytes": sum(
            g["bytes"] - (g["expiring_bytes"] - _EXPIRY_OVERHEAD_BYTES * g["expiring_keys"])
            for g in groups.values()
        ),
        "persistent_keys": sum(g["keys"] - g["expiring_keys"] for g in groups.values()),
        "groups": dict(sorted(groups.items(), key=lambda item: -item[1]["bytes"])),
    }


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute (0 if < 2)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread:
        return 0.0
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def flatness(
    samples: Sequence[MemorySample],
    value: Callable[[MemorySample], int],
    *,
    two_sided: bool = False,
    level_of: Callable[[MemorySample], int] | None = None,
) -> dict[str, Any]:
    """Whether a series is flat after warm-up, by the rule the report states: fit a line to
    the last third of the samples (by time); flat when, at that slope, it grows over the last
    third's span by less than FLAT_SHARE of its mean there. Ramp-up, imports and first
    allocations fall in the first two thirds. `two_sided`: shrinking as fast fails too.
    `level_of`: the level the growth is compared with, when not the series' own (a difference
    of two big series, such as Redis's working set, is too small to be its own yardstick)."""
    if not samples:
        return {"flat": None, "why": "no samples"}
    start, end = samples[0].seconds, samples[-1].seconds
    tail = [s for s in samples if s.seconds >= start + 2 * (end - start) / 3]
    points = [(s.seconds, float(value(s))) for s in tail]
    if len(points) < 3:
        return {"flat": None, "why": f"{len(points)} samples in the last third: too few"}
    per_minute = slope_per_minute(points)
    span_minutes = (points[-1][0] - points[0][0]) / 60
    growth = per_minute * span_minutes
    level = sum(float((level_of or value)(s)) for s in tail) / len(tail)
    flat = (abs(growth) if two_sided else growth) < FLAT_SHARE * level
    return {
        "flat": flat,
        "first": value(samples[0]),
        "last": value(samples[-1]),
        "tail_mean": round(level),
        "tail_slope_bytes_per_minute": round(per_minute),
        "tail_growth_bytes": round(growth),
        "tail_samples": len(points),
    }


class Watch:
    """Samples memory on demand and keeps the series; CPU is read at start() and stop()."""

    def __init__(
        self,
        app_pids: Callable[[], list[int]],
        redis_pids: Callable[[], list[int]],
        client: RedisClient,
        clock_zero: float,
    ):
        self._app_pids, self._redis_pids = app_pids, redis_pids
        self._client = client
        self._zero = clock_zero
        self.samples: list[MemorySample] = []
        self._cpu_start: dict[str, float] = {}
        self._per_process: dict[int, list[float]] = {}  # pid -> CPU seconds at start, stop
        self.cpu: dict[str, Any] = {}

    def take(self, active_calls: int, completed_calls: int) -> MemorySample:
        taken = sample(
            self._app_pids(),
            self._client,
            time.monotonic() - self._zero,
            active_calls,
            completed_calls,
        )
        times = os.times()
        ours = cpu_seconds([*self._app_pids(), *self._redis_pids()]) + times.user + times.system
        taken = replace(taken, machine_cpu_seconds=machine_busy_seconds(), soak_cpu_seconds=ours)
        self.samples.append(taken)
        return taken

    def _cpu_now(self) -> dict[str, float]:
        times = os.times()
        for pid in self._app_pids():
            self._per_process.setdefault(pid, []).append(cpu_seconds([pid]))
        return {
            "app": cpu_seconds(self._app_pids()),
            "redis_server": cpu_seconds(self._redis_pids()),
            "load_driver": times.user + times.system,
            "machine": machine_busy_seconds(),
            "wall": time.monotonic(),
        }

    def start(self) -> None:
        self._cpu_start = self._cpu_now()

    def stop(self) -> None:
        """CPU used since start(), in seconds, and as a share of the machine's cores."""
        end = self._cpu_now()
        wall = end["wall"] - self._cpu_start["wall"]
        cores = os.cpu_count() or 1
        self.cpu = {"wall_seconds": round(wall, 1), "cores": cores}
        for name in ("app", "redis_server", "load_driver", "machine"):
            used = end[name] - self._cpu_start[name]
            self.cpu[f"{name}_seconds"] = round(used, 1)
            self.cpu[f"{name}_share_of_machine"] = round(used / (wall * cores), 3) if wall else 0
        ours = sum(self.cpu[f"{name}_seconds"] for name in ("app", "redis_server", "load_driver"))
        others = max(0.0, self.cpu["machine_seconds"] - ours)
        self.cpu["others_share_of_machine"] = round(others / (wall * cores), 3) if wall else 0
        # gunicorn's workers race to accept connections: one may serve far more than another.
        self.cpu["app_seconds_per_process"] = {
            str(pid): round(seen[-1] - seen[0], 1)
            for pid, seen in self._per_process.items()
            if len(seen) == 2
        }

    def series(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.samples]


def busy_by_window(samples: Sequence[MemorySample], seconds: float) -> list[dict[str, float]]:
    """The machine's CPU per window of time, as shares of all cores: ours (the app, Redis,
    the driver) and everyone else's, so a slow window can be told from a busy neighbour."""
    cores = os.cpu_count() or 1
    windows: dict[int, list[float]] = {}
    for before, after in pairwise(samples):
        wall = after.seconds - before.seconds
        if wall <= 0 or not after.machine_cpu_seconds or not before.machine_cpu_seconds:
            continue
        ours = (after.soak_cpu_seconds - before.soak_cpu_seconds) / (wall * cores)
        machine = (after.machine_cpu_seconds - before.machine_cpu_seconds) / (wall * cores)
        entry = windows.setdefault(int(after.seconds // seconds), [0.0, 0.0, 0.0])
        entry[0] += ours * wall
        entry[1] += max(0.0, machine - ours) * wall
        entry[2] += wall
    return [
        {"from_s": index * seconds, "ours": round(o / w, 3), "others": round(x / w, 3)}
        for index, (o, x, w) in sorted(windows.items())
        if w
    ]
