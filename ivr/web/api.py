"""The JSON API (`/v1/*`), modelled on Twilio Verify: bearer tokens, problem+json errors.

Bodies may be JSON or a form (urlencoded, or multipart with no file part), and field names are
matched without regard to case, so Twilio Verify's `To`, `Channel`, `Code` and `VerificationSid`
work as well as ours. A field given twice (a JSON key, a form field, `to` and `To`) is refused:
which one would count is ambiguous, and a gateway in front may have checked the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from ivr import phone
from ivr.app import services
from ivr.customers import (
    InvalidCustomer,
    PhoneTaken,
    new_customer,
    parse_sms_flag,
    valid_account_number,
)
from ivr.simulator import PhoneSimulator
from ivr.telephony import SimulatedCarrier
from ivr.verification.models import is_call_sid
from ivr.verification.service import (
    CheckOutcome,
    DeliveryFailed,
    InvalidRequest,
    MissedCallsBusy,
    NotCheckable,
    NotFound,
    NotPending,
    OtherNumber,
    RateLimited,
    VerificationError,
)
from ivr.verification.store import Idempotency, IdempotencyConflict, Repeated, stored_answer
from ivr.web.bodies import BodyRefused, json_object, unique_fields
from ivr.web.errors import problem, shortened

blueprint = Blueprint("api", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)


class VerificationSegment(BaseConverter):
    """A path segment that may name a verification: anything but `check`, the check endpoint's
    own name, so `GET /v1/verifications/check` is a 405 allowing POST (and OPTIONS says so)
    rather than a lookup of a verification called "check"."""

    regex = r"(?!check$)[^/]+"


@blueprint.record_once
def _register_converters(state: BlueprintSetupState) -> None:
    # Recorded before the routes below, so the converter exists when their rules are added.
    state.app.url_map.converters["verification"] = VerificationSegment


_ALIASES = {"verificationsid": "sid"}
_DELIVERY_STATUS = {
    "invalid_number": 400,
    "unreachable": 503,
    "upstream_error": 502,
    "rejected": 502,
}
_KEYS_PATTERN = re.compile(r"^[0-9*#]{1,32}$")


class BodyError(Exception):
    def __init__(self, status: int, reason: str, title: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.title, self.detail = status, reason, title, detail


_REFUSED_BODY_TITLES = {
    "invalid_json": "Malformed JSON",
    "duplicate_field": "Field given twice",
    "file_field": "Field sent as a file",
}


@blueprint.before_request
def authenticate() -> Response | None:
    """401 unless `Authorization: Bearer <token>` names a known client."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    client = None
    if scheme.lower() == "bearer" and token.strip():
        client = services().api_tokens.client(token.strip())
    if client is None:
        return problem(
            401,
            "unauthorized",
            "Unauthorized",
            "send 'Authorization: Bearer <token>' with a valid API token",
            headers={"WWW-Authenticate": 'Bearer realm="ivr"'},
        )
    g.client_id = client.name
    # A token scoped to a Verify Service acts in it alone; the others in the default one.
    g.service = None
    if client.service is not None:
        if not request.path.startswith("/v1/verifications"):
            return problem(
                403,
                "scoped_token",
                "Forbidden",
                "this token is scoped to one Verify Service: it may start, check, read and "
                "cancel that Service's verifications, nothing else",
            )
        g.service = services().verify_services.get(client.service)
        if g.service is None:
            return problem(
                403,
                "service_deleted",
                "Forbidden",
                f"this token's Verify Service {client.service} was deleted: revoke the token",
            )
    return None


def _looks_like_json() -> bool:
    """True when the body starts like a JSON object or array (read before any form parsing,
    which takes it from the cache)."""
    return request.get_data(cache=True).lstrip()[:1] in (b"{", b"[")


def _unsupported_media_type(detail: str) -> BodyError:
    return BodyError(415, "unsupported_media_type", "Unsupported media type", detail)


def body(*allowed: str) -> dict[str, Any]:
    """The request's fields (JSON object or form), names lower-cased; refuses unknown names
    and names given twice."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        # Read whole first: a body over the limit is a 413 before any parsing.
        pairs = json_object(request.get_data(cache=True)).items()
    elif mimetype == "multipart/form-data":
        # A part with a filename lands in request.files, not request.form: reading only the
        # form, an unknown name or a field's second value would pass unseen.
        file_part = next(iter(request.files), None)
        if file_part is not None:
            raise BodyRefused(
                "file_field",
                f"'{file_part}' is sent as a file (a part with a filename): send each field "
                "as a plain form value",
                file_part,
            )
        pairs = request.form.items(multi=True)
    elif mimetype == "application/x-www-form-urlencoded":
        # curl -d sends this type unless told otherwise: a JSON body would otherwise come out
        # as one field named after the whole document ("unknown field(s): {...}").
        if _looks_like_json():
            raise _unsupported_media_type(
                "the body is JSON but its Content-Type says a form "
                "(application/x-www-form-urlencoded, curl -d's default): send the header "
                "'Content-Type: application/json'"
            )
        pairs = request.form.items(multi=True)
    elif _looks_like_json():
        said = f"its Content-Type is {mimetype}" if mimetype else "it has no Content-Type"
        raise _unsupported_media_type(
            f"the body is JSON but {said}: send the header 'Content-Type: application/json'"
        )
    else:
        said = f", not {mimetype}" if mimetype else ": the request has none"
        raise _unsupported_media_type(
            f"send 'Content-Type: application/json' (or application/x-www-form-urlencoded){said}"
        )
    fields = unique_fields(pairs, _ALIASES)
    unknown = sorted(str(k) for k in fields if k not in allowed)
    if unknown:
        named = ", ".join(shortened(name, 40) for name in unknown[:5])
        named += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise BodyError(
            400,
            "unknown_field",
            "Unknown field",
            f"unknown field(s): {named}; allowed: {', '.join(allowed)}",
        )
    return fields


def _require(fields: dict[str, Any], name: str) -> Any:
    if fields.get(name) in (None, ""):
        raise InvalidRequest(name, "missing_field", f"'{name}' is required")
    return fields[name]


@blueprint.errorhandler(BodyError)
def _body_error(exc: BodyError) -> Response:
    return problem(exc.status, exc.reason, exc.title, exc.detail)


@blueprint.errorhandler(BodyRefused)
def _body_refused(exc: BodyRefused) -> Response:
    title = _REFUSED_BODY_TITLES.get(exc.reason, "Invalid request")
    return problem(400, exc.reason, title, exc.detail, field=exc.field)


@blueprint.errorhandler(VerificationError)
def _verification_error(exc: VerificationError) -> Response:
    if isinstance(exc, InvalidRequest):
        return problem(400, exc.reason, "Invalid request", exc.detail, field=exc.field)
    if isinstance(exc, RateLimited):
        return problem(
            429,
            "rate_limited",
            "Too many requests",
            exc.detail,
            headers={"Retry-After": str(exc.retry_after)},
            scope=exc.scope,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, OtherNumber):
        return problem(404, exc.reason, "Verification for another number", exc.detail, field="to")
    if isinstance(exc, NotFound):
        return problem(404, "not_found", "Not found", exc.detail)
    if isinstance(exc, MissedCallsBusy):
        return problem(409, exc.reason, "A missed call is already awaited", exc.detail)
    if isinstance(exc, NotCheckable):
        return problem(409, exc.reason, "Not checked by code", exc.detail, sid=exc.sid)
    if isinstance(exc, NotPending):
        return problem(
            409,
            "not_pending",
            "Verification not pending",
            exc.detail,
            sid=exc.sid,
            verification_status=str(exc.status),
        )
    assert isinstance(exc, DeliveryFailed)
    status = _DELIVERY_STATUS.get(exc.reason, 502)
    verification = exc.verification
    return problem(
        status,
        f"carrier_{exc.reason}",
        "The carrier did not take the message",
        exc.detail,
        field="to" if exc.reason == "invalid_number" else None,
        sid=verification.sid if verification else None,
        verification_status=str(verification.status) if verification else None,
        provider_code=exc.carrier_error.provider_code,
    )


@blueprint.errorhandler(InvalidCustomer)
def _invalid_customer(exc: InvalidCustomer) -> Response:
    return problem(400, exc.reason, "Invalid request", exc.detail, field=exc.field)


@blueprint.errorhandler(PhoneTaken)
def _phone_taken(exc: PhoneTaken) -> Response:
    return problem(
        409,
        "phone_taken",
        "Phone already on file",
        f"{exc.detail}: change or delete that customer first",
        field="phone",
        customer_id=exc.holder,
    )


# -- verifications -----------------------------------------------------------------------------


# -- Idempotency-Key (POST /verifications and /verifications/check) ---------------------------
# A client that timed out does not know whether its request acted. Sent again with the same
# Idempotency-Key (within 24 hours, same parameters), it gets the first answer and nothing acts
# twice: the script that acted recorded what it did in the same atomic step, and once the
# answer is made it replaces that record (see VerificationStore). Stripe's and the IETF draft's
# semantics: another request's parameters under a used key are a 422; the header on a replay
# says Idempotent-Replayed: true.

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


def _idempotency(operation: str, fields: dict[str, Any]) -> Idempotency | None:
    """The request's Idempotency-Key as the core keeps it, or None without one. The code of a
    check enters the fingerprint only as its HMAC (never a bare hash of a code in Redis)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key) or len(request.headers.getlist(IDEMPOTENCY_HEADER)) > 1:
        raise BodyError(
            400,
            "invalid_idempotency_key",
            "Invalid Idempotency-Key",
            "Idempotency-Key must be one header of 1 to 255 printable ASCII characters "
            "(a UUID, say)",
        )
    shown = {name: value for name, value in fields.items() if name != "code"}
    if isinstance(fields.get("code"), str):
        shown["code"] = services().code_secrets.digest(fields["code"])
    canonical = json.dumps([operation, shown], sort_keys=True, default=str)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:24]
    digest = hashlib.sha256(f"{g.client_id}\0{operation}\0{key}".encode()).hexdigest()[:32]
    g.idempotency = Idempotency(digest, fingerprint)
    return g.idempotency


@blueprint.after_request
def _remember_the_answer(response: Response) -> Response:
    """Keep the whole answer of a request that acted under an Idempotency-Key (not a 5xx: that
    one's outcome is unknown, and the retry must find out)."""
    idempotency: Idempotency | None = g.pop("idempotency", None)
    if (
        idempotency is None
        or idempotency.bucket is None
        or response.status_code >= 500
        or response.headers.get("Idempotent-Replayed")
    ):
        return response
    try:
        services().verifications.store.remember_answer(
            idempotency, response.status_code, response.get_data(as_text=True)
        )
    except redis.RedisError:  # the record of what acted stays: a retry still learns it
        log.warning("the answer under an Idempotency-Key was not kept", exc_info=True)
    return response


@blueprint.errorhandler(Repeated)
def _repeated(exc: Repeated) -> Response:
    kind, parts = stored_answer(exc.record)
    if kind == "answer":
        status, text = int(parts[0]), parts[1]
        mimetype = "application/problem+json" if status >= 400 else "application/json"
        response = Response(text, status=status, mimetype=mimetype)
        if status == 201:
            sid = json.loads(text).get("sid", "")
            response.headers["Location"] = url_for("api.get_verification", sid=sid)
    else:
        outcome, sid, status_text = parts
        if request.endpoint == "api.check_verification":
            checked = services().verifications.checked_before(outcome, sid, status_text)
            response = _check_answer(checked)
        else:
            verification = services().verifications.get(sid, g.service)
            response = jsonify(verification.to_api())
            response.status_code = 201
            response.headers["Location"] = url_for("api.get_verification", sid=sid)
    response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.errorhandler(IdempotencyConflict)
def _idempotency_conflict(_exc: IdempotencyConflict) -> Response:
    return problem(
        422,
        "idempotency_key_reused",
        "Idempotency-Key already used",
        "this Idempotency-Key was first sent with other parameters; use a new key for a new "
        "request",
    )


@blueprint.post("/verifications")
def start_verification() -> tuple[Response, int, dict[str, str]]:
    """Send a code (or re-send the pending one) by call, SMS or flash call; or open a
    missed-call verification (the response's call_to is the number the user rings)."""
    fields = body("to", "channel", "locale", "country")
    verification = services().verifications.start(
        to=_require(fields, "to"),
        channel=_require(fields, "channel"),
        locale=fields.get("locale"),
        country=fields.get("country"),
        client_id=g.client_id,
        idempotency=_idempotency("start", fields),
        service=g.service,
    )
    location = url_for("api.get_verification", sid=verification.sid)
    return jsonify(verification.to_api()), 201, {"Location": location}


@blueprint.post("/verifications/check")
def check_verification() -> Response:
    """Check a code; approves once, counts wrong codes against the verification and the number."""
    fields = body("to", "sid", "code", "country")
    outcome = services().verifications.check(
        code=_require(fields, "code"),
        sid=fields.get("sid"),
        to=fields.get("to"),
        country=fields.get("country"),
        idempotency=_idempotency("check", fields),
        service=g.service,
    )
    return _check_answer(outcome)


def _check_answer(outcome: CheckOutcome) -> Response:
    return jsonify(
        {
            "sid": outcome.sid,
            "to": outcome.to,
            "status": str(outcome.status),
            "valid": outcome.valid,
        }
    )


@blueprint.get("/stats/missed-calls")
def missed_call_stats() -> Response:
    """What calls to the missed-call numbers came to: approved, nothing_pending (strangers),
    refused (caller ID not trusted), expired, replay, invalid_caller…"""
    return jsonify({"outcomes": services().verifications.store.missed_call_outcomes()})


@blueprint.get("/verifications/<verification:sid>")
def get_verification(sid: str) -> Response:
    return jsonify(services().verifications.get(sid, g.service).to_api())


@blueprint.post("/verifications/<sid>/cancel")
def cancel_verification(sid: str) -> Response:
    return jsonify(services().verifications.cancel(sid, g.service).to_api())


# -- the customer directory ------------------------------------------------------------------


@blueprint.put("/customers/<customer_id>")
def put_customer(customer_id: str) -> tuple[Response, int, dict[str, str]]:
    """Create (201) or replace (200) the customer with this account number."""
    fields = body("id", "phone", "name", "sms", "locale", "country")
    if "id" in fields and fields["id"] != customer_id:  # a GET's answer sent back is fine
        raise InvalidCustomer("id", "id_mismatch", "the body's id differs from the URL's")
    sms = fields.get("sms", True)
    if isinstance(sms, str) and request.mimetype != "application/json":
        try:  # a form can only say "true"/"yes"/"1"…
            sms = parse_sms_flag(sms)
        except ValueError as exc:
            raise InvalidCustomer("sms", "invalid_sms", str(exc)) from None
    ivr = services()
    customer = new_customer(
        customer_id,
        phone_number=fields.get("phone"),
        name=fields.get("name"),
        sms=sms,
        locale=fields.get("locale"),
        country=fields.get("country"),
        resolve_locale=ivr.prompts.resolve_locale,
    )
    created = ivr.customers.put(customer)
    headers = {"Location": url_for("api.get_customer", customer_id=customer.id)} if created else {}
    return jsonify(customer.to_api()), 201 if created else 200, headers


@blueprint.get("/customers/<customer_id>")
def get_customer(customer_id: str) -> Response:
    customer = services().customers.get(valid_account_number(customer_id))
    if customer is None:
        return problem(404, "not_found", "Not found", f"no customer {customer_id}")
    return jsonify(customer.to_api())


@blueprint.delete("/customers/<customer_id>")
def delete_customer(customer_id: str) -> Response:
    if not services().customers.delete(valid_account_number(customer_id)):
        return problem(404, "not_found", "Not found", f"no customer {customer_id}")
    return Response(status=204)


# -- calls in the IVR ------------------------------------------------------------------------------


@blueprint.get("/calls/<call_sid>")
def get_call(call_sid: str) -> Response:
    """Who is on an IVR call and how they were verified: for agent desktops whose handover
    (a plain queue, a number) carries nothing with the call."""
    if not is_call_sid(call_sid):
        return problem(400, "invalid_call_sid", "Invalid CallSid", "expected CA + 32 hex digits")
    state = services().flows.states.load(call_sid)
    if state is None:
        return problem(404, "not_found", "Not found", "no IVR call with this CallSid (or it ended)")
    return jsonify({"call_sid": call_sid, **state.summary()})


# -- the simulated carrier's handsets ----------------------------------------------------------


def _simulated_carrier() -> SimulatedCarrier:
    carrier = services().carrier
    if not isinstance(carrier, SimulatedCarrier):
        raise BodyError(
            404,
            "not_simulated",
            "No simulated carrier",
            "a Twilio account is configured: calls and SMS go to real phones",
        )
    return carrier


@blueprint.get("/simulator/outbox")
def simulator_outbox() -> Response:
    """What the simulated carrier sent, newest first (SMS with their text: the handset's view)."""
    return jsonify({"items": _simulated_carrier().outbox()})


@blueprint.post("/simulator/calls")
def simulator_call_in() -> Response:
    """A simulated phone rings one of our numbers: `from`, `to`, optional `keys` and
    `stir_verstat` (as Twilio would send it, e.g. "TN-Validation-Passed-A"). A missed-call
    number's webhook rejects it; any other number's IVR flow answers. What the phone heard."""
    _simulated_carrier()
    fields = body("from", "to", "keys", "stir_verstat")
    try:
        caller = phone.parse(_require(fields, "from"), None).e164
    except phone.NumberRefused as exc:
        raise InvalidRequest("from", exc.reason, exc.detail) from None
    try:
        to = phone.parse(_require(fields, "to"), None).e164
    except phone.NumberRefused as exc:
        raise InvalidRequest("to", exc.reason, exc.detail) from None
    verstat = fields.get("stir_verstat")
    if verstat is None:
        verstat = ""
    if not isinstance(verstat, str) or len(verstat) > 64:
        raise InvalidRequest("stir_verstat", "invalid_field", "stir_verstat is a short string")
    ivr = services()
    webhook = "missed-call" if to in ivr.settings.missed_call_pool else "incoming"
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    transcript = PhoneSimulator(app, ivr.secrets.webhook_auth_token).call(
        f"{ivr.base_url}/voice/{webhook}",
        from_=caller,
        to=to,
        keys=_simulated_keys(fields),
        extra={"StirVerstat": verstat} if verstat else None,
    )
    return jsonify(transcript.to_dict())


def _simulated_keys(fields: dict[str, Any]) -> list[str]:
    keys = fields.get("keys")
    if keys is None:
        keys = []
    if isinstance(keys, str) and request.mimetype != "application/json":  # a form says "5,1"
        keys = [k for k in keys.split(",") if k]
    if (
        not isinstance(keys, list)
        or not all(isinstance(k, str) and _KEYS_PATTERN.fullmatch(k) for k in keys)
        or len(keys) > 20
    ):
        raise InvalidRequest("keys", "invalid_keys", "keys is a list of key strings like '5'")
    return keys


@blueprint.post("/simulator/calls/<call_sid>/answer")
def simulator_answer(call_sid: str) -> Response:
    """Answer a simulated call and press `keys` (e.g. ["5", "1"]); returns what was heard."""
    carrier = _simulated_carrier()
    # The body is optional; one sent chunked has no Content-Length, but is a body all the same.
    keys = _simulated_keys(body("keys") if request.get_data(cache=True) else {})
    call = carrier.find(call_sid)
    if call is None or call["kind"] != "call":
        raise NotFound("the simulated carrier placed no call with this sid")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    phone = PhoneSimulator(app, services().secrets.webhook_auth_token)
    transcript = phone.call(
        call["url"],
        from_=call["from"],
        to=call["to"],
        keys=keys,
        call_sid=call_sid,
        direction="outbound-api",
        status_callback=call.get("status_callback"),
    )
    return jsonify(transcript.to_dict())
