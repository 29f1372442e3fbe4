"""The floors to compare against, served by gunicorn with our settings.

- `create_app`: bare Flask answering every POST with a fixed TwiML document. It shows what the
  framework, the server and the client cost before any of our work (signature check, Redis,
  TwiML building) is added. The targets are ratios to this one.
- `create_redis_app`: the same, plus one Redis read per request, through the client our app
  uses (`ivr.store.connect`) on the Redis our app uses. No target: it shows the most any
  webhook that must touch Redis could reach on this machine, so a ratio can be read against it.
"""

from __future__ import annotations

import os

from flask import Flask, Response

from ivr.store import connect

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hello</Say><Hangup/></Response>'
REDIS_URL_VARIABLE = "BENCH_REDIS_URL"
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
    """The static app plus one HMGET per request (what our answer step used to do)."""
    app = Flask(__name__)
    client = connect(os.environ[REDIS_URL_VARIABLE])  # connects on first use

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def static_twiml_after_a_redis_read(path: str) -> Response:  # noqa: ARG001
        client.hmget(_PROBE_KEY, "status", "expires_at", "locale")
        return Response(TWIML, mimetype="text/xml")

    return app
