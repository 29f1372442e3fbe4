"""Unauthenticated pages: health and readiness, the OpenAPI document, recorded prompts for
<Play>; and the metrics, behind METRICS_TOKEN (or loopback)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import redis
import yaml
from flask import Blueprint, Response, abort, jsonify, request, send_from_directory

from ivr import metrics
from ivr.app import Services, services
from ivr.events import EventOutbox
from ivr.prompts import AUDIO_SUFFIXES
from ivr.recordings import RECORDING_NAME
from ivr.store import redis_status
from ivr.web.errors import problem

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


# The outbox is stuck when its first event has been due this long and nobody claimed it: the
# events threads claim due events every second, and a retry or a lease is due in the future.
OUTBOX_STUCK_AFTER_SECONDS = 300


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when this worker can serve: Redis answers, flows and prompts are loaded, and (with
    EVENTS_WEBHOOK_URL) the outbox is not stuck; else 503 naming the checks that failed."""
    ivr = services()
    checks = {
        "redis": _redis_check(ivr),
        "flows": _flows_check(ivr),
        "prompts": _prompts_check(ivr),
    }
    if ivr.events is not None:
        checks["events"] = _outbox_check(ivr.events.outbox)
    failed = [name for name, check in checks.items() if check["status"] != "ok"]
    body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
    return jsonify(body), 503 if failed else 200


def _redis_check(ivr: Services) -> dict[str, Any]:
    found = redis_status(ivr.redis)
    if found["status"] == "ok":
        return {"status": "ok", "latency_ms": found["latency_ms"]}
    return {"status": "failed", "detail": f"Redis does not answer ({found['error']})"}


def _flows_check(ivr: Services) -> dict[str, Any]:
    served = ivr.flows.library.flows
    if served:
        return {"status": "ok", "flows": len(served)}
    return {
        "status": "failed",
        "detail": "no flow is served: none in FLOWS_DIR loads, and none is published",
    }


def _prompts_check(ivr: Services) -> dict[str, Any]:
    locales = ivr.prompts.locales
    if ivr.prompts.default_locale in locales:
        return {"status": "ok", "locales": len(locales)}
    return {"status": "failed", "detail": f"no catalog for {ivr.prompts.default_locale}"}


def _outbox_check(outbox: EventOutbox) -> dict[str, Any]:
    try:
        backlog = outbox.backlog()
    except redis.RedisError as exc:
        return {"status": "failed", "detail": f"Redis does not answer ({type(exc).__name__})"}
    found: dict[str, Any] = {"status": "ok", "pending": backlog.pending, "dead": backlog.dead}
    if backlog.oldest_due_ms is None:
        return found
    overdue = max(0, (outbox.clock_ms() - backlog.oldest_due_ms) // 1000)
    found["oldest_due_seconds_ago"] = overdue
    if overdue > OUTBOX_STUCK_AFTER_SECONDS:
        found["status"] = "failed"
        found["detail"] = (
            f"the oldest event has been due for {overdue} s (over "
            f"{OUTBOX_STUCK_AFTER_SECONDS} s): no events thread is delivering"
        )
    return found


LOOPBACK = frozenset({"127.0.0.1", "::1"})
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


@blueprint.get("/metrics")
def metrics_page() -> Response:
    """The Prometheus metrics of every worker, with a few read from Redis at scrape time."""
    refused = _metrics_refused()
    if refused is not None:
        return refused
    return Response(metrics.exposition(_scraped_families), content_type=metrics.CONTENT_TYPE)


def _metrics_refused() -> Response | None:
    """With METRICS_TOKEN, a request must carry it as a bearer token. Without it, only a direct
    request on loopback is served: one a proxy forwarded (nginx on the same host connects from
    loopback too) says so in its headers."""
    expected = services().settings.metrics_token
    if expected is not None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given, expected.get_secret_value().encode()
        ):
            return None
        return problem(
            401,
            "unauthorized",
            "Unauthorized",
            "send 'Authorization: Bearer <METRICS_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    if request.remote_addr in LOOPBACK and not any(
        name in request.headers for name in FORWARDING_HEADERS
    ):
        return None
    return problem(
        403,
        "forbidden",
        "Forbidden",
        "without METRICS_TOKEN, /metrics answers only on loopback to a request no proxy "
        "forwarded: set METRICS_TOKEN to scrape it from elsewhere",
    )


def _scraped_families() -> Iterator[Any]:
    """What only Redis knows, read once per scrape (never on a request's path): whether it
    answers, and with EVENTS_WEBHOOK_URL the outbox's backlog."""
    from prometheus_client.core import GaugeMetricFamily

    ivr = services()
    up = redis_status(ivr.redis)["status"] == "ok"
    yield GaugeMetricFamily("ivr_redis_up", "1 when Redis answered this scrape's PING", int(up))
    if ivr.events is None or not up:
        return
    try:
        backlog = ivr.events.outbox.backlog()
    except redis.RedisError:
        return
    overdue = 0.0
    if backlog.oldest_due_ms is not None:
        overdue = max(0.0, (ivr.events.outbox.clock_ms() - backlog.oldest_due_ms) / 1000)
    yield GaugeMetricFamily(
        "ivr_events_pending", "Events waiting for delivery (retries included)", backlog.pending
    )
    yield GaugeMetricFamily(
        "ivr_events_oldest_due_age_seconds",
        "How long the first event due has waited (0: none is due)",
        overdue,
    )
    yield GaugeMetricFamily("ivr_events_dead", "Events given up, kept 7 days", backlog.dead)


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
