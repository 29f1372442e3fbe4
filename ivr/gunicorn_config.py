"""gunicorn settings for `make run`, `ivr serve` and the Procfile.

Listens on 127.0.0.1:$PORT (5000) in development; on every interface when HOST says so, when
PORT is set explicitly (a platform's router connects from outside), or when a Twilio account
is configured (Twilio must reach it). Runs $WEB_CONCURRENCY workers (2) with threads, so a
worker waiting on Twilio's REST API does not hold up webhooks.

Before anything listens, the master checks the settings and the prompt catalogs: a bad one prints
one line per problem and gunicorn exits (no worker boots, no traceback). With REDIS_URL unset
the master starts the embedded Redis before forking, so every worker shares one server, and
stops it on exit. With IVR_STOP_WITH_PARENT=1 (`make run`) the master also stops when the
process that started it ends, so killing `make run` ends everything. Each worker runs the
events thread (see ivr.events) when EVENTS_WEBHOOK_URL is set.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Any

from gunicorn import glogging


def _host() -> str:
    """Where to listen: HOST, else every interface if PORT was set explicitly or Twilio must
    reach us, else loopback only (a development token and admin password are in use)."""
    if os.environ.get("HOST"):
        return os.environ["HOST"]
    if os.environ.get("PORT") or os.environ.get("TWILIO_ACCOUNT_SID"):
        return "0.0.0.0"  # noqa: S104 - a platform's router or Twilio connects from outside
    return "127.0.0.1"


bind = f"{_host()}:{os.environ.get('PORT') or '5000'}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
# gunicorn's control socket (gunicornc) would be one per user ($HOME/.gunicorn/gunicorn.ctl),
# shared by every server that user runs (two `make run`s, the bench's peers); we use none.
control_socket_disable = True
accesslog = "-"
# Never log query strings or bodies: the access log shows method, path and status only. The
# path is the one sent, still percent-encoded (see AccessLogger): a decoded %0A would end the
# line, and what follows it would read as a request of its own.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


class AccessLogger(glogging.Logger):
    """gunicorn's logger, whose access lines cannot be forged: %(U)s is the request target as
    sent (percent-encoded, without its query), and no atom carries a control character."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        atoms = super().atoms(resp, req, environ, request_time)
        raw = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
        atoms["U"] = raw.split("?", 1)[0].split("#", 1)[0]
        return {k: _printable(v) if isinstance(v, str) else v for k, v in atoms.items()}


# C0 and C1 controls (NEL, \x85, ends a line for some readers), DEL and Unicode's separators.
_LINE_BREAKERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(value: str) -> str:
    """`value` with each control character written as \\xNN (isprintable first: it is fast)."""
    if value.isprintable():
        return value
    return _LINE_BREAKERS.sub(lambda found: f"\\x{ord(found.group()):02x}", value)


logger_class = AccessLogger

_embedded: Any = None


def on_starting(server: Any) -> None:
    """Refuse a configuration that cannot serve, before anything listens; then start the
    embedded Redis in the master, so workers find it running."""
    global _embedded
    _refuse_what_cannot_serve()
    _fresh_metrics_folder(server)
    if os.environ.get("IVR_STOP_WITH_PARENT") == "1":
        _stop_with_parent(server)
    if os.environ.get("REDIS_URL"):
        return
    from ivr.config import instance_folder
    from ivr.store import EmbeddedRedis

    _embedded = EmbeddedRedis(instance_folder() / "redis")
    url = _embedded.ensure_running()
    server.log.info("embedded redis serving on %s", url)


def _refuse_what_cannot_serve() -> None:
    """The checks create_app would fail on in every worker, made once: the settings and the
    prompt catalogs. One line per problem on stderr, then exit 2."""
    from ivr.config import ConfigError, load_settings
    from ivr.prompts import load_catalogs

    try:
        settings = load_settings()
        load_catalogs(settings.voice_prompts_dir, settings.default_locale)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"ivr: {problem}", file=sys.stderr)
        print(
            "ivr: not started: fix the settings above (`ivr check-config` lists them)",
            file=sys.stderr,
        )
        sys.exit(2)


def _stop_with_parent(server: Any) -> None:
    """Stop gracefully (workers, then the embedded Redis) once the process that started us is
    gone: `make run &` then `kill %1` must not leave a server behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        server.log.info("the process that started gunicorn ended: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def post_worker_init(worker: Any) -> None:
    """In each worker, after the fork: the background thread (the events thread when
    EVENTS_WEBHOOK_URL is set, else the housekeeping one)."""
    from ivr.app import start_background_work

    started = start_background_work(worker.wsgi)
    if started is not None and started[0].name == "ivr-events":
        worker.log.info("events: delivering to EVENTS_WEBHOOK_URL")


def on_exit(server: Any) -> None:
    if _embedded is not None:
        _embedded.stop()
        server.log.info("embedded redis stopped")


def _fresh_metrics_folder(server: Any) -> None:
    """An empty folder for the workers' metric files (prometheus-client's multiprocess mode),
    named in PROMETHEUS_MULTIPROC_DIR for the workers forked after this: the one the operator
    set, else `metrics/` in the instance folder."""
    from pathlib import Path

    from ivr.config import instance_folder
    from ivr.metrics import MULTIPROC_DIR_VARIABLE, prepare_multiprocess_dir

    chosen = os.environ.get(MULTIPROC_DIR_VARIABLE) or instance_folder() / "metrics"
    server.log.info("metrics: workers count in %s", prepare_multiprocess_dir(Path(chosen)))


def child_exit(_server: Any, worker: Any) -> None:
    """A worker exited: its live gauges go; its counters stay in the totals."""
    from ivr.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def _json_logger() -> type:
    """LOG_FORMAT=json: gunicorn's own lines, and its access log, as JSON objects too. An
    access line has the path as sent (never the query: sealed call state travels there) and
    the request id the app answered with; JSON escapes any control character in it."""
    from gunicorn import glogging

    from ivr.logs import REQUEST_ID_HEADER, json_formatter

    class JsonLogger(glogging.Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for handler in (*self.error_log.handlers, *self.access_log.handlers):
                handler.setFormatter(json_formatter())

        def access(self, resp: Any, _req: Any, environ: dict[str, Any], request_time: Any) -> None:
            if not self.cfg.accesslog:
                return
            status = str(resp.status).split(None, 1)[0]
            answered = {name.lower(): value for name, value in resp.headers}
            raw = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
            method, path = environ.get("REQUEST_METHOD", ""), raw.split("?", 1)[0]
            self.access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "remote": environ.get("REMOTE_ADDR"),
                    "method": method,
                    "path": path,
                    "status": int(status) if status.isdigit() else status,
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": round(request_time.total_seconds() * 1000, 2),
                    "request_id": answered.get(REQUEST_ID_HEADER.lower()),
                },
            )

    return JsonLogger


if os.environ.get("LOG_FORMAT") == "json":
    logger_class = _json_logger()
