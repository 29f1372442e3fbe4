"""The peers our webhooks are measured against, served by gunicorn with our settings.

- `create_app`: bare Flask answering every POST with a fixed TwiML document. It shows what the
  framework, the server and the client cost before any of our work (signature check, Redis,
  TwiML building) is added.
- `create_redis_app`: the same, plus what every webhook of ours must do before its own work:
  check X-Twilio-Signature (our one-HMAC fast path over the parsed form), then one Redis read,
  through the client our app uses (`ivr.store.connect`) on the Redis our app uses: the most any
  webhook that must touch Redis could reach on this machine.
- `create_tutorial_app`: what a developer writes instead of using this project, as Twilio's
  tutorials teach it: `RequestValidator.validate` on the request, the call's state read with one
  Redis round trip through a plain `redis.Redis`, and a question built with `VoiceResponse`.
  The targets are ratios to this one: our webhooks do far more (flows, limits, sealed state,
  replay protection) and should still not be slower.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import redis
from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from ivr.store import connect
from ivr.web.webhooks import SIGNATURE_HEADER, twilio_signature

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hello</Say><Hangup/></Response>'
REDIS_URL_VARIABLE = "BENCH_REDIS_URL"
# Our app writes its development webhook token there at start; requests are signed with it.
TOKEN_FILE_VARIABLE = "BENCH_WEBHOOK_TOKEN_FILE"
_PROBE_KEY = "bench:reference"


def create_app() -> Flask:
    """A Flask app with one catch-all POST route returning static TwiML."""
    app = Flask(__name__)

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def static_twiml(path: str) -> Response:  # noqa: ARG001 - every path answers alike
        return Response(TWIML, mimetype="text/xml")

    return app


def create_redis_app() -> Flask:
    """The static app plus a signature check and one HMGET per request."""
    app = Flask(__name__)
    client = connect(os.environ[REDIS_URL_VARIABLE])  # connects on first use
    token_file = Path(os.environ[TOKEN_FILE_VARIABLE])
    tokens: list[str] = []  # read once our app has written it

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def static_twiml_after_a_redis_read(path: str) -> Response:  # noqa: ARG001
        if not tokens:
            tokens.append(token_file.read_text().strip())
        expected = twilio_signature(tokens[0], request.url, list(request.form.items(multi=True)))
        if not hmac.compare_digest(expected, request.headers[SIGNATURE_HEADER].encode()):
            abort(403)
        client.hmget(_PROBE_KEY, "status", "expires_at", "locale")
        return Response(TWIML, mimetype="text/xml")

    return app


def create_tutorial_app() -> Flask:
    """Twilio's tutorial webhook: validate the request, read the call's state (one HGETALL),
    answer a question built with VoiceResponse in the call's language."""
    app = Flask(__name__)
    store = redis.Redis.from_url(os.environ[REDIS_URL_VARIABLE])
    token_file = Path(os.environ[TOKEN_FILE_VARIABLE])
    validators: list[RequestValidator] = []

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def gather_a_digit(path: str) -> Response:  # noqa: ARG001 - every path answers alike
        if not validators:
            validators.append(RequestValidator(token_file.read_text().strip()))
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not validators[0].validate(request.url, request.form, signature):
            abort(403)
        call = store.hgetall(f"tutorial:call:{request.form.get('CallSid', '')}")
        response = VoiceResponse()
        gather = response.gather(num_digits=1, action="/voice/menu", timeout=5)
        gather.say(
            "Thank you for calling. For account help, press 1. For opening hours, press 2.",
            language=call.get(b"language", b"en-US").decode(),
        )
        response.redirect("/voice/menu")
        return Response(str(response), mimetype="text/xml")

    return app
