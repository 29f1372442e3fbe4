"""The floor to compare against: bare Flask answering every POST with a fixed TwiML document.

Served by gunicorn with our settings, it shows what the framework, the server and the client cost
before any of our work (signature check, Redis, TwiML building) is added.
"""

from __future__ import annotations

from flask import Flask, Response

TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hello</Say><Hangup/></Response>'


def create_app() -> Flask:
    """A Flask app with one catch-all POST route returning static TwiML."""
    app = Flask(__name__)

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def static_twiml(path: str) -> Response:  # noqa: ARG001 - every path answers alike
        return Response(TWIML, mimetype="text/xml")

    return app
