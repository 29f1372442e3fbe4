"""Logging: readable text by default, one JSON object per line with LOG_FORMAT=json.

Either way each record logged while a request is served knows that request: its id (the
client's X-Request-Id when well-formed, else a new one; sent back in the response), its route
(the URL rule, never the path), and the CallSid or verification sid once known. In JSON these
are fields of the object; in text they are left out, as before.

What a record may hold is what the messages say: numbers masked (ivr.phone.masked), never a
code, a token or a query string (sealed call state travels there). The context holds only
values checked against their shapes.

No Flask here: the web edge opens a request's context (`begin`/`end`) and the core adds to it
(`bind`); outside a request (the events thread, `ivr` commands) there is none.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import IO, Any, Literal

REQUEST_ID_HEADER = "X-Request-Id"
# A request id we take from a client or proxy: 16 to 128 of these characters (a UUID, nginx's
# $request_id, a trace id). Never shorter: a code (4-10 digits) can never pass for one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{16,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("request_id", "route", "method", "call_sid", "verification_sid", "outcome")

LogFormat = Literal["text", "json"]

# The context of the request being served in this thread: field -> value, plus "_lazy", a
# function returning fields only known later (the CallSid, once the form is parsed).
_context: ContextVar[dict[str, Any] | None] = ContextVar("ivr_log_context", default=None)


def request_id(incoming: str | None) -> str:
    """The request's id: the incoming one when well-formed, else a new random one."""
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)


def begin(lazy: Callable[[], dict[str, str]] | None = None, **fields: str) -> Token:
    """Open a request's context (its id, route…); `end` closes it."""
    context: dict[str, Any] = {k: v for k, v in fields.items() if v}
    if lazy is not None:
        context["_lazy"] = lazy
    return _context.set(context)


def end(token: Token) -> None:
    """Close the context `begin` opened (a request served inside another, as the simulator's
    are, gives the outer one back)."""
    _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields to the current request's context (no-op outside a request)."""
    context = _context.get()
    if context is not None:
        context.update({k: v for k, v in fields.items() if v})


def current() -> dict[str, str]:
    """The current request's context fields (empty outside a request)."""
    context = _context.get()
    if not context:
        return {}
    found = {k: v for k, v in context.items() if k != "_lazy"}
    lazy = context.get("_lazy")
    if lazy is not None:
        with contextlib.suppress(Exception):  # a log line never fails for its context
            found = lazy() | found
    return found


class ContextFilter(logging.Filter):
    """Puts the request's context on each record (fields the call did not set itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the request's
    context, any `extra` fields, and the traceback when there is one."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def formatter(log_format: LogFormat) -> logging.Formatter:
    return json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def handler(stream: IO[str], log_format: LogFormat) -> logging.Handler:
    """A handler writing to `stream` in `log_format`, each record with its request context."""
    made = logging.StreamHandler(stream)
    made.setFormatter(formatter(log_format))
    made.addFilter(ContextFilter())
    return made


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Log the `ivr` loggers at `level` on stderr in `log_format`, once per process: a handler
    on the root logger, unless the process set up logging of its own (a test run, a host
    application), whose handlers are left alone."""
    root = logging.getLogger()
    installed = [h for h in root.handlers if getattr(h, "_ivr_installed", False)]
    if not root.handlers:
        made = handler(sys.stderr, log_format)
        made._ivr_installed = True  # type: ignore[attr-defined] - found again by a later app
        root.addHandler(made)
    for found in installed:
        found.setFormatter(formatter(log_format))
    logging.getLogger("ivr").setLevel(level)
    # twilio-python logs every request line at INFO; keep it quiet whatever the root level.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
