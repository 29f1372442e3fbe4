"""Unauthenticated pages: health, the OpenAPI document, and recorded prompts for <Play>."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, abort, jsonify, send_from_directory

from ivr.app import services
from ivr.prompts import AUDIO_SUFFIXES
from ivr.recordings import RECORDING_NAME
from ivr.store import redis_status

blueprint = Blueprint("public", __name__)


@blueprint.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when Redis answers, 503 when it does not; says which store and carrier serve."""
    ivr = services()
    store = redis_status(ivr.redis) | {"backend": ivr.redis_backend}
    healthy = store["status"] == "ok"
    body = {
        "status": "ok" if healthy else "unavailable",
        "store": store,
        "carrier": ivr.carrier.name,
    }
    return jsonify(body), 200 if healthy else 503


@cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description, shipped as ivr/openapi.yaml."""
    text = resources.files("ivr").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@blueprint.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@blueprint.get("/prompts/audio/<locale>/<filename>")
def prompt_audio(locale: str, filename: str) -> Response:
    """A recorded prompt, for Twilio's <Play>; only recordings the live catalogs name are
    served: uploaded ones from Redis (named by their content, so cached for good), the others
    from the audio folder."""
    catalog = services().prompts.catalogs.get(locale)
    if catalog is None or filename not in catalog.audio.values():
        abort(404)
    if RECORDING_NAME.match(filename):
        return recording_response(filename)
    if not filename.endswith(AUDIO_SUFFIXES):
        abort(404)
    directory = services().prompts.directory / "audio" / locale
    return send_from_directory(directory, filename, max_age=3600)


def recording_response(name: str) -> Response:
    """An uploaded recording's bytes; 404 when it is not stored."""
    found = services().recordings.audio(name)
    if found is None:
        abort(404)
    audio, mime_type = found
    response = Response(audio, mimetype=mime_type)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
