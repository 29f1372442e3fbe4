"""The floors to compare against, served by gunicorn with our settings.

- `create_app`: bare Flask answering every POST with a fixed TwiML document. It shows what the
  framework, the server and the client cost before any of our work (signature check, Redis,
  TwiML building) is added. The targets are ratios to this one.
- `create_redis_app`: the same, plus what every webhook of ours must do before its own work:
  check X-Twilio-Signature (our one-HMAC fast path over the parsed form), then one Redis read,
  through the client our app uses (`ivr.store.connect`) on the Redis our app uses. No target:
  it shows the most any webhook that must touch Redis could reach on this machine, so a ratio
  can be read against it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator

from ivr.store import connect
from ivr.web.webhooks import SIGNATURE_HEADER, _SignedParams

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
    validators: list[RequestValidator] = []  # read once our app has written the token

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def static_twiml_after_a_redis_read(path: str) -> Response:  # noqa: ARG001
        if not validators:
            validators.append(RequestValidator(token_file.read_text().strip()))
        expected = validators[0].compute_signature(request.url, _SignedParams(request.form))
        if not hmac.compare_digest(expected.encode(), request.headers[SIGNATURE_HEADER].encode()):
            abort(403)
        client.hmget(_PROBE_KEY, "status", "expires_at", "locale")
        return Response(TWIML, mimetype="text/xml")

    return app
