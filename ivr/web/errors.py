"""Every error becomes a clear answer: RFC 9457 problem+json for the API, polite TwiML for a
caller, never a traceback or a 500 page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import redis
from flask import Flask, Response, current_app, jsonify, request
from twilio.twiml.voice_response import VoiceResponse
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE_PREFIX = "urn:ivr:problem:"
WEBHOOK_PREFIXES = ("/voice/", "/sms/")
_UNROUTED_HANDLERS = "ivr.unrouted_error_handlers"


# What a problem repeats of the client's input is bounded: a 60 KB field name must not come
# back as a 60 KB answer (nor fill a log that records the answer).
MAX_DETAIL_CHARS = 500
MAX_INSTANCE_CHARS = 200


def shortened(text: str, limit: int) -> str:
    """`text`, or its start and an ellipsis when it is longer than `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem(
    status: int,
    reason: str,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """An application/problem+json response (RFC 9457); `reason` names the problem type."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + reason,
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = shortened(detail, MAX_DETAIL_CHARS)
    if len(request.path) <= MAX_INSTANCE_CHARS:  # a cut path would name another resource
        body["instance"] = request.path
    for name, value in extensions.items():
        if value is not None:
            body[name] = shortened(value, MAX_DETAIL_CHARS) if isinstance(value, str) else value
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def logged_path() -> str:
    """The request's path for a log line, percent-encoded again where it is not plain text:
    a %0A sent in it must not end the line, and what follows read as a line of its own."""
    return quote(request.path, safe="/:@!$&'()*+,;=")


def twiml(response: VoiceResponse) -> Response:
    """TwiML with the content type Twilio expects."""
    return Response(str(response), mimetype="text/xml")


def polite_goodbye() -> Response:
    """What a caller hears when we cannot go on: an apology in their language, then hang up."""
    from ivr.app import services  # late: errors must render even when wiring failed

    response = VoiceResponse()
    try:
        ivr = services()
        ivr.prompts.speak(response, ivr.prompts.default_locale, "call.error")
    except Exception:  # last resort: the caller must still hear words
        response.say("Sorry, we cannot continue this call. Goodbye.")
    response.hangup()
    return twiml(response)


def _is_webhook() -> bool:
    return request.path.startswith(WEBHOOK_PREFIXES)


def http_error_headers(exc: HTTPException) -> dict[str, str]:
    """The headers Werkzeug's exception carries for its status (`Allow` on a 405, RFC 9110),
    without the Content-Type of the HTML page it would have rendered."""
    return {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}


def answer_unrouted_errors(
    app: Flask, prefix: str, handler: Callable[[HTTPException], Response]
) -> None:
    """Let an edge answer the 404s and 405s under its `prefix` that match none of its routes:
    Flask raises those before any blueprint is chosen, so the blueprint's own error handler
    (the console's page, with its security headers) never sees them."""
    app.extensions.setdefault(_UNROUTED_HANDLERS, []).append((prefix, handler))


def _unrouted_handler(path: str) -> Callable[[HTTPException], Response] | None:
    if request.blueprint is not None:
        return None
    for prefix, handler in current_app.extensions.get(_UNROUTED_HANDLERS, ()):
        if path == prefix or path.startswith(prefix + "/"):
            return handler
    return None


def _http_error(exc: HTTPException) -> Response:
    if (edge := _unrouted_handler(request.path)) is not None:
        return edge(exc)
    status = exc.code or 500
    headers = http_error_headers(exc)
    if _is_webhook():
        # Not Twilio, or not a request we know: a plain 4xx, no TwiML to speak.
        return Response(
            exc.description or exc.name, status=status, mimetype="text/plain", headers=headers
        )
    reason = exc.name.lower().replace(" ", "_")
    return problem(status, reason, exc.name, exc.description, headers=headers)


def _store_unavailable(exc: redis.RedisError) -> Response:
    log.error("redis unavailable while serving %s: %s", logged_path(), type(exc).__name__)
    if _is_webhook():
        return polite_goodbye()
    return problem(
        503,
        "store_unavailable",
        "State store unavailable",
        "Redis did not answer in time. Nothing was read; of a request that changes state, the "
        "outcome is unknown: send it again with the same Idempotency-Key to learn it.",
        headers={"Retry-After": "5"},
    )


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unexpected error while serving %s", logged_path())
    if _is_webhook():
        return polite_goodbye()
    return problem(500, "internal_error", "Internal error", "The error was logged.")


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.RedisError, _store_unavailable)
    app.register_error_handler(Exception, _unexpected)
