"""The app factory: settings, store, core services and the blueprints, built per call.

Nothing is created at import time, so every test builds its own app (Flask's tutorial pattern).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

from ivr import logs, phone, store
from ivr.config import (
    MAX_FLASH_CALL_GUESS_ODDS,
    Secrets,
    Settings,
    instance_folder,
    load_settings,
    resolve_secrets,
)
from ivr.customers import CrmLookup, CustomerDirectory, CustomerFinder
from ivr.events import EventDispatcher, EventOutbox
from ivr.flows.engine import FlowEngine
from ivr.flows.library import open_library
from ivr.flows.state import CallStateStore
from ivr.flows.versions import DocumentVersions
from ivr.housekeeping import Housekeeper
from ivr.metrics import http_method, metrics
from ivr.prompts import PromptCatalogs, load_catalogs
from ivr.recordings import Recordings
from ivr.telephony import Carrier, SimulatedCarrier, TwilioCarrier
from ivr.tokens import ApiTokens
from ivr.users import ADMIN_PASSWORD_FILE, AuditLog, Users, ensure_development_admin
from ivr.verification.codes import CodeSecrets
from ivr.verification.limits import SendLimiter
from ivr.verification.models import Verification, is_call_sid, is_sid
from ivr.verification.service import CallChannels, CodePolicy, SendLimits, VerificationService
from ivr.verification.services import VerifyServices
from ivr.verification.stats import VerificationStats
from ivr.verification.store import VerificationStore
from ivr.web.bodies import BoundedRequest

MAX_REQUEST_BYTES = 64 * 1024
# Where calls and SMS appear to come from when no Twilio account (and so no number) is set.
SIMULATED_CALLER_ID = "+15005550006"


@dataclass
class Services:
    """What the blueprints use, built once per app."""

    settings: Settings
    secrets: Secrets
    redis: redis.Redis
    redis_backend: str  # "embedded" or "redis"
    prompts: PromptCatalogs
    recordings: Recordings  # uploaded in the console; played from Redis on every host
    carrier: Carrier
    code_secrets: CodeSecrets
    verifications: VerificationService
    api_tokens: ApiTokens
    verify_services: VerifyServices  # Twilio Verify's Services (/v2); /v1 uses the default one
    customers: CustomerDirectory
    # Directory, then the CRM hook when CUSTOMER_LOOKUP_URL is set: what identifies a caller.
    customer_finder: CustomerFinder
    flows: FlowEngine  # the IVR: flow files from FLOWS_DIR, call state in Redis
    # EVENTS_WEBHOOK_URL set: verification ends are queued here, and this delivers them.
    events: EventDispatcher | None = None
    users: Users | None = None  # the console's users and sessions
    audit: AuditLog | None = None  # who changed what, in the console and through `ivr`
    # Development only: where the generated first admin's password is (shown on sign-in).
    console_admin_password_file: Path | None = None
    base_url: str = ""  # PUBLIC_BASE_URL, or where `make run` serves: what webhooks are under
    # TwiML documents that depend only on prompt and locale, rendered once (see webhooks).
    rendered_twiml: dict[tuple[str, ...], str] = field(default_factory=dict)
    rendered_twiml_version: int = 0  # the prompts' version those documents were rendered from
    # Chores every worker runs in its background thread (each safe on many hosts at once).
    housekeeping: tuple[Callable[[], object], ...] = ()


def start_background_work(app: object) -> tuple[threading.Thread, threading.Event] | None:
    """Start this process's background thread: the events thread when EVENTS_WEBHOOK_URL is
    set (deliveries, the expiry sweep that announces verification.expired, and the
    housekeeping chores), else a housekeeping thread for the chores alone: the reconciliation
    of sends left "requested", the sweep of recordings no prompts text names. Call it in each
    gunicorn worker, after the fork; setting the returned event stops the returned thread.
    Any other WSGI app (the bench's baselines) has none."""
    ivr = getattr(app, "extensions", {}).get("ivr")
    if not isinstance(ivr, Services):
        return None
    if ivr.events is not None:
        return ivr.events.start()
    return Housekeeper(ivr.housekeeping).start()


def services() -> Services:
    """The current app's services (inside a request or app context)."""
    return current_app.extensions["ivr"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config` overrides environment variables (keys as variable names)."""
    overrides = dict(config or {})
    override = overrides.pop("INSTANCE_PATH", None)
    instance_path = Path(override).resolve() if override else instance_folder()
    app = Flask(__name__, instance_path=str(instance_path))
    settings = load_settings(overrides)
    _log_flash_call_odds(settings)
    if settings.trusted_proxy_hops:
        # The client's address only (x_for): webhook signatures are checked against
        # PUBLIC_BASE_URL, never against a Host or scheme a proxy says.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    logs.configure(settings.log_level, settings.log_format)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES,
        MAX_FORM_PARTS=200,
        JSON_SORT_KEYS=False,
    )
    # Werkzeug cuts a body sent chunked at MAX_CONTENT_LENGTH without a word: ours is a 413.
    app.request_class = BoundedRequest
    instance = Path(app.instance_path)
    app_secrets = resolve_secrets(settings, instance)
    # No app.config["SECRET_KEY"]: we use no cookie sessions, and with a key set Flask builds a
    # session signer on every request.

    if settings.redis_url:
        cluster = settings.redis_url.partition("://")[0].lower() in store.CLUSTER_SCHEMES
        redis_url, backend = settings.redis_url, "cluster" if cluster else "redis"
    else:
        redis_url, backend = store.EmbeddedRedis(instance / "redis").ensure_running(), "embedded"
    client = store.connect(redis_url)

    from ivr.web.webhooks import CallbackUrls  # the web edge owns its own paths

    base_url = settings.public_base_url or f"http://localhost:{settings.port}"
    prompt_versions = DocumentVersions(client, "prompts")
    prompts = load_catalogs(
        settings.voice_prompts_dir,
        settings.default_locale,
        f"{base_url}/prompts/audio",
        published=prompt_versions,
    )
    recordings = Recordings(client, max_total_bytes=settings.recordings_max_mb * 1024 * 1024)
    code_secrets = CodeSecrets(app_secrets.secret_key)
    carrier = _carrier(settings, client, code_secrets)
    verify_services = VerifyServices(
        client, app_secrets.secret_key, settings.app_name, settings.otp_length
    )

    def render(sid: str, fields: dict[str, str]) -> dict[str, object]:
        return _render_verification(sid, fields, verify_services.default_sid)

    outbox = EventOutbox(client, render=render) if settings.events_webhook_url else None
    scripts = store.Scripts(
        client,
        replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    verifications = VerificationService(
        store=VerificationStore(
            client,
            scripts=scripts,
            events=outbox is not None,
            retention_ms=settings.verification_retention_seconds * 1000,
        ),
        limiter=SendLimiter(client),
        carrier=carrier,
        code_secrets=code_secrets,
        prompts=prompts,
        number_policy=phone.NumberPolicy(settings.allowed_countries),
        urls=CallbackUrls(base_url),
        caller_id=settings.twilio_caller_id or SIMULATED_CALLER_ID,
        app_name=settings.app_name,
        code_policy=CodePolicy(
            length=settings.otp_length,
            ttl_seconds=settings.otp_ttl_seconds,
            max_attempts=settings.otp_max_attempts,
            failure_budget=settings.check_failure_limit_per_number,
            retention_seconds=settings.verification_retention_seconds,
        ),
        send_limits=SendLimits(
            per_number=settings.send_limit_per_number,
            per_prefix=settings.send_limit_per_prefix,
            per_client=settings.send_limit_per_token,
        ),
        sms_origin_domain=settings.sms_origin_domain,
        call_channels=CallChannels(
            missed_call_numbers=settings.missed_call_pool,
            missed_call_ttl_seconds=settings.missed_call_ttl_seconds,
            min_attestation=settings.missed_call_min_attestation,
            flash_call_numbers=settings.flash_call_numbers,
            flash_code_length=settings.flash_call_code_length,
            flash_ring_seconds=settings.flash_call_ring_seconds,
            flash_max_attempts=settings.flash_call_max_attempts,
            flash_ttl_seconds=settings.flash_call_ttl_seconds,
        ),
        events=outbox,
        # The console's simulated calls send here, even with a Twilio account configured.
        simulated_carrier=SimulatedCarrier(client, code_secrets),
        stats=VerificationStats(client),
        # A send is asked of Twilio with a few tries of TWILIO_HTTP_TIMEOUT each; one still
        # "requested" well after that was left by a worker that stopped.
        send_deadline_seconds=max(120, int(4 * settings.twilio_http_timeout) + 30),
    )
    housekeeping = (
        verifications.reconcile_sends,
        partial(recordings.sweep_if_due, prompt_versions.kept_records),
    )
    customers = CustomerDirectory(client)
    customer_finder = CustomerFinder(customers, _crm_lookup(settings, prompts))
    flows = FlowEngine(
        library=open_library(settings.flows_dir, prompts, client),
        prompts=prompts,
        states=CallStateStore(client, settings.call_state_ttl_seconds, app_secrets.secret_key),
        verifications=verifications,
        customers=customer_finder,
        urls=CallbackUrls(base_url),
        app_name=settings.app_name,
    )
    app.extensions["ivr"] = Services(
        settings=settings,
        secrets=app_secrets,
        redis=client,
        redis_backend=backend,
        prompts=prompts,
        recordings=recordings,
        carrier=carrier,
        code_secrets=code_secrets,
        verifications=verifications,
        api_tokens=ApiTokens(client, app_secrets.secret_key, app_secrets.api_token),
        verify_services=verify_services,
        customers=customers,
        customer_finder=customer_finder,
        flows=flows,
        events=_event_dispatcher(settings, outbox, verifications, housekeeping),
        users=(users := Users(client, development_password_file=instance / ADMIN_PASSWORD_FILE)),
        audit=AuditLog(client),
        console_admin_password_file=_development_admin(settings, users, instance),
        base_url=base_url,
        housekeeping=housekeeping,
    )

    from ivr.web import api, console, errors, public, verify_v2, webhooks

    app.register_blueprint(public.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(verify_v2.blueprint)
    app.register_blueprint(verify_v2.errors_blueprint)
    console.init_app(app)
    errors.init_app(app)
    _observe_requests(app)
    return app


def _log_flash_call_odds(settings: Settings) -> None:
    """Say at every start how often a guesser passes a flash-call verification: above 1 % the
    settings were refused unless FLASH_CALL_ACCEPT_WEAK_ODDS accepts it, and then it is a
    warning each time."""
    pool = settings.flash_call_numbers
    if not pool:
        return
    odds = settings.flash_call_guess_odds
    accepted = settings.flash_call_accept_weak_odds and odds > MAX_FLASH_CALL_GUESS_ODDS
    logging.getLogger(__name__).log(
        logging.WARNING if accepted else logging.INFO,
        "flash calls: %d numbers, %d attempts: a guesser without the phone passes %g %% of "
        "flash-call verifications%s",
        len(pool),
        settings.flash_call_max_attempts,
        round(odds * 100, 2),
        " (accepted by FLASH_CALL_ACCEPT_WEAK_ODDS)" if accepted else "",
    )


def _development_admin(settings: Settings, users: Users, instance: Path) -> Path | None:
    """Without a Twilio account (development), a first `admin` with a generated password kept
    in the instance folder, so `make run` can be signed in to at once. Never in production:
    there, `ivr users create` makes the users."""
    if settings.uses_twilio:
        return None
    try:
        path = ensure_development_admin(users, instance)
    except redis.RedisError as exc:
        logging.getLogger(__name__).warning("console: no development admin (%s)", exc)
        return None
    if path is not None:
        logging.getLogger(__name__).info(
            "console: sign in at %s/console as admin; the password is in %s",
            settings.public_base_url or f"http://localhost:{settings.port}",
            path,
        )
    return path


def _carrier(settings: Settings, client: redis.Redis, code_secrets: CodeSecrets) -> Carrier:
    if settings.twilio_account_sid and settings.twilio_auth_token:
        return TwilioCarrier(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_api_base_url,
            timeout=settings.twilio_http_timeout,
        )
    return SimulatedCarrier(client, code_secrets)


def _render_verification(
    sid: str, fields: dict[str, str], default_service_sid: str
) -> dict[str, object]:
    """The data of an event a script queued: the verification as the API shows it, and the
    Verify Service it belongs to (the default one's sid for /v1's)."""
    verification = Verification.from_hash(sid, fields)
    return {**verification.to_api(), "service_sid": verification.service_sid or default_service_sid}


def _event_dispatcher(
    settings: Settings,
    outbox: EventOutbox | None,
    verifications: VerificationService,
    housekeeping: tuple[Callable[[], object], ...],
) -> EventDispatcher | None:
    if outbox is None or not settings.events_webhook_url or not settings.events_webhook_secret:
        return None
    return EventDispatcher(
        outbox,
        url=settings.events_webhook_url,
        secret=settings.events_webhook_secret.get_secret_value(),
        timeout=settings.events_webhook_timeout_seconds,
        max_attempts=settings.events_max_attempts,
        chores=(verifications.expire_due, *housekeeping),
    )


def _crm_lookup(settings: Settings, prompts: PromptCatalogs) -> CrmLookup | None:
    if not (settings.customer_lookup_url and settings.customer_lookup_secret):
        return None
    return CrmLookup(
        settings.customer_lookup_url,
        settings.customer_lookup_secret.get_secret_value(),
        settings.customer_lookup_timeout_seconds,
        resolve_locale=prompts.resolve_locale,
    )


# Where a request's own record lives: Flask's `g` is shared with the requests the simulator
# serves inside it (same app context), the WSGI environ is not.
_STARTED, _REQUEST_ID, _LOG_CONTEXT = "ivr.started", "ivr.request_id", "ivr.log_context"
_request_log = logging.getLogger("ivr.request")


def _observe_requests(app: Flask) -> None:
    """Each request gets an id (X-Request-Id in and out) and a log context; each is counted and
    timed by route (the URL rule), and summed up in one log line (INFO in JSON, else DEBUG:
    in text, gunicorn's access log says as much)."""
    as_json = app.extensions["ivr"].settings.log_format == "json"
    summary_level = logging.INFO if as_json else logging.DEBUG

    @app.before_request
    def begin() -> None:
        environ = request.environ
        environ[_STARTED] = time.perf_counter()
        environ[_REQUEST_ID] = logs.request_id(request.headers.get(logs.REQUEST_ID_HEADER))
        sid = (request.view_args or {}).get("sid")
        environ[_LOG_CONTEXT] = logs.begin(
            _webhook_fields if request.path.startswith(("/voice/", "/sms/")) else None,
            request_id=environ[_REQUEST_ID],
            route=_route(),
            method=request.method,
            verification_sid=sid if is_sid(sid) else None,
        )

    @app.after_request
    def finish(response: Response) -> Response:
        environ = request.environ
        started = environ.get(_STARTED)
        if started is None:  # a hook before ours answered: nothing was opened
            return response
        seconds = time.perf_counter() - started
        route, method, status = _route(), http_method(request.method), response.status_code
        counted = metrics()
        counted.http_requests.labels(route, method, str(status)).inc()
        counted.http_duration.labels(route, method).observe(seconds)
        response.headers[logs.REQUEST_ID_HEADER] = environ[_REQUEST_ID]
        if _request_log.isEnabledFor(summary_level):  # text at INFO: nothing more to do
            outcome = logs.current().get("outcome") or _outcome_of(status)
            _request_log.log(
                summary_level,
                "%s %s %s",
                method,
                route,
                status,
                extra={
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "outcome": outcome,
                },
            )
        return response

    @app.teardown_request
    def end(_exc: BaseException | None) -> None:
        token = request.environ.pop(_LOG_CONTEXT, None)
        if token is not None:
            logs.end(token)


def _route() -> str:
    """The request's URL rule (never its path: sids and numbers are not labels)."""
    return request.url_rule.rule if request.url_rule is not None else "(unmatched)"


def _webhook_fields() -> dict[str, str]:
    """The CallSid of a webhook, once its form was parsed (a log line never parses it)."""
    form = request._get_current_object().__dict__.get("form")  # werkzeug's cached_property
    call_sid = form.get("CallSid", "") if form is not None else ""
    return {"call_sid": call_sid} if is_call_sid(call_sid) else {}


def _outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return "refused" if status < 500 else "error"
