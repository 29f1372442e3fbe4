"""Twilio Verify v2 on the wire, under /v2: an app that uses a Twilio SDK moves here by
changing its Verify base URL and credentials, and keeps every line of its code.

Form-encoded requests (what the SDKs send), JSON answers with Twilio's fields, errors in
Twilio's shape ({code, message, more_info, status}) with Twilio's codes where one fits, and
ours (documented in docs/verify-v2.md) where none does. HTTP Basic authentication: the password
is one of our API tokens; the user name is free (an app's Account SID), unless it is a key sid
(SK…), which must then be that token's. Behind it is the same core as /v1: the limits, the
hashing, the code call, the simulated carrier, the events.

Parameters Twilio documents and this server does not act on (Amount, Payee, AppHash,
TemplateSid, Tags, RiskCheck…) are accepted and ignored, as Twilio ignores unknown ones
(its warning 20001): an SDK's call never fails for sending them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ivr.app import services
from ivr.verification.models import Channel, Status, Verification, is_sid
from ivr.verification.service import (
    DeliveryFailed,
    InvalidRequest,
    MissedCallsBusy,
    NotCheckable,
    NotFound,
    NotPending,
    RateLimited,
    VerificationError,
)
from ivr.verification.services import (
    ConcurrentUpdates,
    ReadOnlyService,
    ServiceError,
    TooManyServices,
    VerifyService,
)
from ivr.web.bodies import repeated_name
from ivr.web.errors import answer_unrouted_errors, http_error_headers, logged_path

log = logging.getLogger(__name__)

blueprint = Blueprint("verify_v2", __name__, url_prefix="/v2")

MORE_INFO = "https://www.twilio.com/docs/errors/{code}"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")  # an API key sid as a Basic user name
_MAX_FIELD_CHARS = 1000  # longer than any value Twilio takes

# Our own codes, where Twilio has none; each explained at <PUBLIC_BASE_URL>/verify-errors/<code>
# (the more_info of the error) and in docs/verify-v2.md.
MISSED_CALL_AWAITED = 69001
CARRIER_REFUSED = 69002
NOT_CHECKED_BY_CODE = 69003
DEFAULT_SERVICE_READ_ONLY = 69004
TOO_MANY_SERVICES = 69005
OUR_ERRORS = {
    MISSED_CALL_AWAITED: "Every missed-call number already awaits a call from this phone: ring "
    "one of them (the call_to of its pending verification), or wait for one to expire.",
    CARRIER_REFUSED: "The carrier (Twilio's Calls or Messages API) did not take the call or "
    "SMS; the verification's send attempt is marked failed. Try again later.",
    NOT_CHECKED_BY_CODE: "A missed-call verification has no code: the user's call to its "
    "call_to number approves it. Fetch it to see its status.",
    DEFAULT_SERVICE_READ_ONLY: "The default Service (the one /v1 uses) takes its settings "
    "from the server's environment (APP_NAME, OTP_LENGTH): create a Service of your own to "
    "choose them through the API.",
    TOO_MANY_SERVICES: "This server keeps at most 1,000 Services: delete one you no longer use.",
}

# Unauthenticated: what an error's more_info points at, for our own codes.
errors_blueprint = Blueprint("verify_v2_errors", __name__)


@errors_blueprint.get("/verify-errors/<int:code>")
def explain_error(code: int) -> Response:
    text = OUR_ERRORS.get(code)
    if text is None:
        return Response(f"no error {code} here\n", status=404, mimetype="text/plain")
    return Response(f"Error {code}: {text}\n", mimetype="text/plain")


class TwilioError(Exception):
    """An answer in Twilio's error shape."""

    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _twilio_error(exc: TwilioError) -> Response:
    if exc.code in OUR_ERRORS:
        more_info = f"{services().base_url.rstrip('/')}/verify-errors/{exc.code}"
    else:
        more_info = MORE_INFO.format(code=exc.code)
    response = jsonify(
        {"code": exc.code, "message": exc.message, "more_info": more_info, "status": exc.status}
    )
    response.status_code = exc.status
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def invalid(parameter: str, detail: str = "") -> TwilioError:
    """Twilio's 60200, naming the parameter as Twilio does ("Invalid parameter: To")."""
    return TwilioError(
        400, 60200, f"Invalid parameter: {parameter}" + (f" ({detail})" if detail else "")
    )


def not_found() -> TwilioError:
    return TwilioError(404, 20404, f"The requested resource {request.path} was not found")


blueprint.register_error_handler(TwilioError, _twilio_error)


@blueprint.errorhandler(redis.RedisError)
def _store_unavailable(exc: redis.RedisError) -> Response:
    log.error("redis unavailable while serving %s: %s", logged_path(), type(exc).__name__)
    return _twilio_error(
        TwilioError(
            503,
            20503,
            "Service unavailable: the state store did not answer; of a request that changes "
            "state, the outcome is unknown. Fetch the verification to learn it.",
            headers={"Retry-After": "5"},
        )
    )


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    codes = {404: 20404, 405: 20004, 413: 20413, 415: 20415}
    return _twilio_error(
        TwilioError(
            status,
            codes.get(status, 20000 + status),
            exc.description or exc.name,
            headers=http_error_headers(exc),
        )
    )


blueprint.register_error_handler(HTTPException, _http_error)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    """Whatever else went wrong still answers in Twilio's shape, so an SDK raises its own
    TwilioRestException rather than choking on a body it does not know."""
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unexpected error while serving %s", logged_path())
    return _twilio_error(TwilioError(500, 20500, "Internal error: it was logged"))


@blueprint.record_once
def _answer_unrouted(state: Any) -> None:
    answer_unrouted_errors(state.app, "/v2", _http_error)


# -- authentication ----------------------------------------------------------------------------


@blueprint.before_request
def authenticate() -> None:
    """HTTP Basic: the password is an API token; a key sid (SK…) as user name must be its."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    client = None
    if scheme.lower() == "basic" and encoded.strip():
        try:
            user, _, password = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
            user = password = ""
        tokens = services().api_tokens
        client = tokens.client(password) if password else None
        key_sid = KEY_SID.fullmatch(user) is not None
        if (
            client is not None
            and key_sid
            and not hmac.compare_digest(user.encode(), tokens.key_sid(password).encode())
        ):
            client = None  # a key sid that is not this token's
    if client is None:
        raise TwilioError(
            401,
            20003,
            "Authenticate: send HTTP Basic credentials whose password is an API token",
            headers={"WWW-Authenticate": 'Basic realm="ivr"'},
        )
    g.client_id = client.name
    g.scope = client.service  # a token scoped to one Service sees no other


# -- reading the form --------------------------------------------------------------------------


def form() -> dict[str, str]:
    """The request's form parameters (Twilio's PascalCase names, as the SDKs send them); a
    name given twice, or a value longer than any Twilio takes, is a 60200."""
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
        raise TwilioError(
            415, 20415, "Send the parameters form-encoded (application/x-www-form-urlencoded)"
        )
    pairs = list(request.form.items(multi=True))
    if (twice := repeated_name(pairs)) is not None:
        raise invalid(twice, "given twice")
    fields = dict(pairs)
    for name, value in fields.items():
        if len(value) > _MAX_FIELD_CHARS:
            raise invalid(name, "too long")
    return fields


def _service(sid: str) -> VerifyService:
    """The Service `sid`, if this token may see it (a scoped token sees its own alone)."""
    if g.scope is not None and sid != g.scope:
        raise not_found()
    service = services().verify_services.get(sid)  # None for what is no sid, too
    if service is None:
        raise not_found()
    return service


def _unscoped_only() -> None:
    """Creating, deleting and listing every Service is for tokens not scoped to one."""
    if g.scope is not None:
        raise TwilioError(
            403, 20403, "This token is scoped to one Service: it cannot create or delete Services"
        )


def _base() -> str:
    """Where the client reached us: the SDKs follow our next_page_url as it is (with the
    credentials), so it must be reachable and, behind a TLS proxy, https: PUBLIC_BASE_URL
    when the client came by its host, else the host the request names."""
    public = services().base_url.rstrip("/")
    if public and urlsplit(public).netloc == request.host:
        return public
    return request.host_url.rstrip("/")


def _twilio_time(epoch_ms: int | None) -> str | None:
    """Twilio's date format, exactly what twilio-python parses (seconds, "Z")."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Services -----------------------------------------------------------------------------------


def service_json(service: VerifyService) -> dict[str, Any]:
    url = f"{_base()}/v2/Services/{service.sid}"
    nested = service.nested
    return {
        "sid": service.sid,
        "account_sid": services().verify_services.account_sid,
        "friendly_name": service.friendly_name,
        "code_length": service.code_length,
        "lookup_enabled": service.lookup_enabled,
        "psd2_enabled": service.psd2_enabled,
        "skip_sms_to_landlines": service.skip_sms_to_landlines,
        "dtmf_input_required": service.dtmf_input_required,
        "tts_name": service.tts_name,
        "do_not_share_warning_enabled": service.do_not_share_warning_enabled,
        "custom_code_enabled": service.custom_code_enabled,
        "push": nested["push"],
        "totp": nested["totp"],
        "default_template_sid": service.default_template_sid,
        "whatsapp": nested["whatsapp"],
        "passkeys": nested["passkeys"],
        "verify_event_subscription_enabled": service.verify_event_subscription_enabled,
        "date_created": _twilio_time(service.created_at),
        "date_updated": _twilio_time(service.updated_at),
        "url": url,
        "links": {
            "verification_checks": f"{url}/VerificationCheck",
            "verifications": f"{url}/Verifications",
            "rate_limits": f"{url}/RateLimits",
            "messaging_configurations": f"{url}/MessagingConfigurations",
            "entities": f"{url}/Entities",
            "webhooks": f"{url}/Webhooks",
            "access_tokens": f"{url}/AccessTokens",
        },
    }


def _settings_error(exc: ServiceError) -> TwilioError:
    return invalid(exc.field, exc.detail)


@blueprint.post("/Services")
def create_service() -> tuple[Response, int]:
    _unscoped_only()
    try:
        service = services().verify_services.create(form())
    except ServiceError as exc:
        raise _settings_error(exc) from None
    except TooManyServices:
        raise TwilioError(
            403, TOO_MANY_SERVICES, "This server holds as many Services as it keeps (1,000)"
        ) from None
    return jsonify(service_json(service)), 201


@blueprint.get("/Services")
def list_services() -> Response:
    page_size = _query_int("PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = _query_int("Page", 0, 0, 10**6)
    if g.scope is not None:  # a scoped token lists its own Service alone
        own = services().verify_services.get(g.scope)
        found, more = ([own] if own is not None and page == 0 else []), False
    else:
        found, more = services().verify_services.page(page, page_size)

    def page_url(number: int) -> str:
        return f"{_base()}/v2/Services?PageSize={page_size}&Page={number}&PageToken=PT{number}"

    return jsonify(
        {
            "services": [service_json(service) for service in found],
            "meta": {
                "page": page,
                "page_size": page_size,
                "first_page_url": page_url(0),
                "previous_page_url": page_url(page - 1) if page > 0 else None,
                "url": page_url(page),
                "next_page_url": page_url(page + 1) if more else None,
                "key": "services",
            },
        }
    )


def _query_int(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]{1,7}", value) or not low <= int(value):
        raise invalid(name, f"a whole number from {low}")
    return min(int(value), high)


@blueprint.get("/Services/<sid>")
def fetch_service(sid: str) -> Response:
    return jsonify(service_json(_service(sid)))


@blueprint.post("/Services/<sid>")
def update_service(sid: str) -> Response:
    _service(sid)
    fields = form()
    try:
        updated = services().verify_services.update(sid, fields)
    except ServiceError as exc:
        raise _settings_error(exc) from None
    except ReadOnlyService:
        raise _read_only() from None
    except ConcurrentUpdates:
        raise TwilioError(
            503, 20503, "The Service is being changed by others: try again", {"Retry-After": "1"}
        ) from None
    if updated is None:
        raise not_found()
    return jsonify(service_json(updated))


@blueprint.delete("/Services/<sid>")
def delete_service(sid: str) -> tuple[str, int]:
    _unscoped_only()
    try:
        deleted = services().verify_services.delete(sid)
    except ReadOnlyService:
        raise _read_only() from None
    if not deleted:
        raise not_found()
    return "", 204


def _read_only() -> TwilioError:
    return TwilioError(
        403,
        DEFAULT_SERVICE_READ_ONLY,
        "The default Service is configured by the server's environment (APP_NAME, "
        "OTP_LENGTH): create a Service of your own to change its settings",
    )


# -- Verifications --------------------------------------------------------------------------------

# Our channel names, as Twilio's Channel parameter gives them.
_CHANNELS = {"call": Channel.CALL, "sms": Channel.SMS}
_OUR_CHANNELS = {"missed_call": Channel.MISSED_CALL, "flash_call": Channel.FLASH_CALL}


def _attempt_sid(sid: str, index: int) -> str:
    return "VL" + hashlib.sha256(f"{sid}:{index}".encode()).hexdigest()[:32]


def verification_json(verification: Verification, service: VerifyService) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sid": verification.sid,
        "service_sid": service.sid,
        "account_sid": services().verify_services.account_sid,
        "to": verification.to,
        "channel": verification.channel,
        "status": str(verification.status),
        "valid": verification.status is Status.APPROVED,
        "lookup": {},
        "amount": None,
        "payee": None,
        "send_code_attempts": [
            {
                "attempt_sid": _attempt_sid(verification.sid, index),
                "channel": attempt.channel,
                "time": _twilio_time(attempt.created_at),
            }
            for index, attempt in enumerate(verification.send_attempts)
        ],
        "date_created": _twilio_time(verification.created_at),
        "date_updated": _twilio_time(verification.updated_at),
        "sna": None,
        "url": f"{_base()}/v2/Services/{service.sid}/Verifications/{verification.sid}",
    }
    if verification.channel == Channel.MISSED_CALL:
        body["call_to"] = verification.call_to  # ours: the number the user rings
    return body


def _core_error(exc: VerificationError, *, checking: bool = False) -> TwilioError:
    """Twilio's code for what the core refused (ours where Twilio has none)."""
    if isinstance(exc, InvalidRequest):
        return _invalid_request(exc)
    if isinstance(exc, RateLimited):
        retry = {"Retry-After": str(exc.retry_after)}
        if exc.scope == "number":
            return TwilioError(429, 60203, "Max send attempts reached", retry)
        if exc.scope == "check_failures":
            return TwilioError(429, 60202, "Max check attempts reached", retry)
        if exc.scope == "prefix":
            return TwilioError(
                429, 60410, "Too many codes to this prefix: it is blocked for a while", retry
            )
        return TwilioError(429, 20429, "Too many requests", retry)
    if isinstance(exc, NotCheckable):
        return TwilioError(
            400, NOT_CHECKED_BY_CODE, "A missed-call verification is approved by the call"
        )
    if isinstance(exc, NotPending) and checking and exc.status is Status.MAX_ATTEMPTS_REACHED:
        return TwilioError(429, 60202, "Max check attempts reached")
    if isinstance(exc, NotFound | NotPending):
        return not_found()
    if isinstance(exc, MissedCallsBusy):
        return TwilioError(409, MISSED_CALL_AWAITED, exc.detail)
    assert isinstance(exc, DeliveryFailed)
    if exc.reason == "invalid_number":
        return invalid("To", exc.detail)
    return TwilioError(502, CARRIER_REFUSED, f"The carrier did not take it: {exc.detail}")


_REFUSED_NUMBERS = {
    "country_not_allowed": (403, 60605, "Verification delivery to this country is not enabled"),
    "number_type_refused": (403, 60410, "Verification delivery to this number is blocked"),
    "channel_unsupported": (403, 60205, "SMS is not supported by landline phone number"),
}
_PARAMETERS = {
    "to": "To",
    "channel": "Channel",
    "locale": "Locale",
    "code": "Code",
    "custom_code": "CustomCode",
    "sid": "VerificationSid",
    "country": "To",
}


def _invalid_request(exc: InvalidRequest) -> TwilioError:
    if exc.reason in _REFUSED_NUMBERS:
        status, code, message = _REFUSED_NUMBERS[exc.reason]
        return TwilioError(status, code, message)
    return invalid(_PARAMETERS.get(exc.field, exc.field), exc.detail)


@blueprint.post("/Services/<service_sid>/Verifications")
def create_verification(service_sid: str) -> tuple[Response, int]:
    service = _service(service_sid)
    fields = form()
    to = fields.get("To", "").strip()
    if not to:
        raise invalid("To", "required")
    channel_name = fields.get("Channel", "").strip().lower()
    channel = _CHANNELS.get(channel_name) or _OUR_CHANNELS.get(channel_name)
    if channel is None:
        raise invalid("Channel", "call, sms, missed_call or flash_call")
    custom_name = fields.get("CustomFriendlyName", "").strip() or None
    if custom_name is not None and (len(custom_name) > 30 or not custom_name.isprintable()):
        raise invalid("CustomFriendlyName", "1 to 30 printable characters")
    try:
        verification = services().verifications.start(
            to=to,
            channel=str(channel),
            locale=(fields.get("Locale") or "").strip() or None,
            client_id=g.client_id,
            service=service,
            custom_friendly_name=custom_name,
            custom_code=(fields.get("CustomCode") or "").strip() or None,
        )
    except VerificationError as exc:
        raise _core_error(exc) from None
    return jsonify(verification_json(verification, service)), 201


@blueprint.get("/Services/<service_sid>/Verifications/<sid>")
def fetch_verification(service_sid: str, sid: str) -> Response:
    """A verification of this Service. As on Twilio, one that was approved or expired is
    gone from /v2 (404); /v1 keeps it readable for the retention period."""
    service = _service(service_sid)
    try:
        verification = services().verifications.get(sid, service)
    except VerificationError as exc:
        raise _core_error(exc) from None
    if verification.status in (Status.APPROVED, Status.EXPIRED):
        raise not_found()
    return jsonify(verification_json(verification, service))


@blueprint.post("/Services/<service_sid>/Verifications/<sid>")
def update_verification(service_sid: str, sid: str) -> Response:
    """Status=canceled ends a pending verification; Status=approved approves it without a
    code (an app that verified the user another way)."""
    service = _service(service_sid)
    status = form().get("Status", "").strip().lower()
    if status not in ("canceled", "approved"):
        raise invalid("Status", "canceled or approved")
    if not is_sid(sid):
        raise not_found()
    core = services().verifications
    try:
        if status == "canceled":
            verification = core.cancel(sid, service)
        else:
            verification = core.approve(sid, service)
    except VerificationError as exc:
        raise _core_error(exc) from None
    return jsonify(verification_json(verification, service))


@blueprint.post("/Services/<service_sid>/VerificationCheck")
def check_verification(service_sid: str) -> Response:
    """A code for the pending verification of `To` (or of `VerificationSid`). A wrong code is
    an answer (200, pending), as on Twilio; a verification that is not pending is a 404."""
    service = _service(service_sid)
    fields = form()
    code = fields.get("Code", "").strip()
    if not code:
        raise invalid("Code", "required")
    to = fields.get("To", "").strip() or None
    sid = fields.get("VerificationSid", "").strip() or None
    if to is None and sid is None:
        raise TwilioError(400, 60221, "Either a To number or VerificationSid SID is required")
    core = services().verifications
    try:
        outcome = core.check(code=code, sid=sid, to=to, service=service)
        verification = core.get(outcome.sid, service)
    except NotFound as exc:
        if sid is None and core.exhausted(to, service):
            raise TwilioError(429, 60202, "Max check attempts reached") from None
        raise _core_error(exc, checking=True) from None
    except VerificationError as exc:
        raise _core_error(exc, checking=True) from None
    return jsonify(
        {
            "sid": verification.sid,
            "service_sid": service.sid,
            "account_sid": services().verify_services.account_sid,
            "to": verification.to,
            "channel": verification.channel,
            "status": str(outcome.status),
            "valid": outcome.valid,
            "amount": None,
            "payee": None,
            "date_created": _twilio_time(verification.created_at),
            "date_updated": _twilio_time(verification.updated_at),
            "sna_attempts_error_codes": None,  # null unless the channel was SNA
        }
    )
