"""gunicorn settings for `make run`, `ivr serve` and the Procfile.

Binds 0.0.0.0:$PORT (5000), runs $WEB_CONCURRENCY workers (2) with threads, so a worker waiting
on Twilio's REST API does not hold up webhooks. With REDIS_URL unset the master starts the
embedded Redis before forking, so every worker shares one server, and stops it on exit. Each
worker runs the events thread (see ivr.events) when EVENTS_WEBHOOK_URL is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
# Never log query strings or bodies: the access log shows method, path and status only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'

_embedded: Any = None


def on_starting(server: Any) -> None:
    """Start the embedded Redis in the master, so workers find it running."""
    global _embedded
    if os.environ.get("REDIS_URL"):
        return
    from flask import Flask

    from ivr.store import EmbeddedRedis

    instance = os.environ.get("INSTANCE_PATH")
    instance_path = instance or Flask("ivr.app").instance_path
    _embedded = EmbeddedRedis(Path(instance_path).resolve() / "redis")
    url = _embedded.ensure_running()
    server.log.info("embedded redis serving on %s", url)


def post_worker_init(worker: Any) -> None:
    """In each worker, after the fork: the events thread (when EVENTS_WEBHOOK_URL is set)."""
    from ivr.app import start_background_work

    if start_background_work(worker.wsgi) is not None:
        worker.log.info("events: delivering to EVENTS_WEBHOOK_URL")


def on_exit(server: Any) -> None:
    if _embedded is not None:
        _embedded.stop()
        server.log.info("embedded redis stopped")
