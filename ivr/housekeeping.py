"""Chores each worker runs in a thread of its own, beside the requests: the reconciliation of
sends a dead worker left "requested", the sweep of uploaded recordings nothing names (with an
events webhook, the dispatcher runs these chores and its own: the expiry sweep). Every worker
may run them: each chore is safe to run twice."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class Housekeeper:
    """Runs `chores` every `interval` seconds until stopped; never dies of an exception (a
    thread that died would leave the chores undone, unseen)."""

    def __init__(self, chores: tuple[Callable[[], object], ...], interval: float = 5.0):
        self.chores = chores
        self.interval = interval

    def run(self, stop: threading.Event) -> None:
        redis_down = False
        while not stop.wait(self.interval):
            try:
                for chore in self.chores:
                    chore()
                redis_down = False
            except redis.RedisError as exc:
                if not redis_down:  # once per outage
                    log.warning("housekeeping: Redis unavailable (%s)", type(exc).__name__)
                redis_down = True
            except Exception:
                log.exception("housekeeping: a chore failed; will retry")

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="ivr-chores", daemon=True)
        thread.start()
        return thread, stop
