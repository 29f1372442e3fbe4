"""Twilio's webhooks: every route here checks X-Twilio-Signature first, with no way to turn it off.

The verification call: answer -> "press any key" (nothing of the code is said before a key
press, so a voicemail box never hears it) -> the code digit by digit, twice -> "press 1 to hear
it again" -> goodbye.

The call's URL names its verification and its language (/voice/code/<sid>/<locale>/), so the
answer needs no Redis at all: it is one static document per locale. Only the key press, which
hands out the code, asks Redis (once); a verification that ended while the phone rang is told
"no longer available" there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, abort, request
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Gather, VoiceResponse
from werkzeug.datastructures import MultiDict

from ivr import phone
from ivr.app import services
from ivr.flows.engine import CallInfo, FlowEngine, Trial
from ivr.verification.models import is_call_sid, is_sid
from ivr.web.bodies import repeated_name
from ivr.web.errors import logged_path, twiml

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
_TWILIO_SID = re.compile(r"^(CA|SM|MM)[0-9a-f]{32}$")
_KEY_TIMEOUT_SECONDS = 6
_MAX_DIGITS_FIELD = 32  # Digits longer than any key sequence a caller can type here


class CallbackUrls:
    """Absolute URLs of these webhooks, as given to Twilio (the core asks for them by sid)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def call_answer(
        self, sid: str, locale: str, service_sid: str = "", custom_name: bool = False
    ) -> str:
        # The trailing slash lets the call's TwiML name the next step relatively ("reveal"),
        # so the greeting is the same document for every call in a locale (rendered once).
        # A Verify Service's call names it (its greeting says the Service's name), and so does
        # one of the default Service with a name of its own (CustomFriendlyName).
        segment = service_sid or (NAMED_DEFAULT_SERVICE if custom_name else "")
        service = f"{segment}/" if segment else ""
        return f"{self.base_url}/voice/code/{sid}/{locale}/{service}"

    def call_status(self, sid: str) -> str:
        return f"{self.base_url}/voice/status/{sid}"

    def sms_status(self, sid: str) -> str:
        return f"{self.base_url}/sms/status/{sid}"

    def flash_call_answer(self) -> str:
        return f"{self.base_url}/voice/flash-call"

    def flow_step(self, step: int, sealed: str | None = None) -> str:
        return f"{self.base_url}/voice/flow/{step}{_sealed_query(sealed)}"

    def flow_dial_result(self, step: int, sealed: str | None = None) -> str:
        return f"{self.base_url}/voice/flow/{step}/dial{_sealed_query(sealed)}"


SEALED_STATE_PARAMETER = "s"
# In a code call's URL instead of a Service's sid: the default Service, with a name the
# verification gives (its greeting reads the verification).
NAMED_DEFAULT_SERVICE = "named"


def _sealed_query(sealed: str | None) -> str:
    # URL-safe base64 without padding: nothing to escape.
    return f"?{SEALED_STATE_PARAMETER}={sealed}" if sealed else ""


def signed_url() -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path + query (a proxy in front changes what
    Flask sees; twilio-python issues #715, #751). PUBLIC_BASE_URL is required with a Twilio
    account; without one only the simulated phone signs, with the URL Flask sees."""
    base = services().settings.public_base_url
    if not base:
        return request.url
    # The request target as sent (gunicorn: RAW_URI, Werkzeug: REQUEST_URI), so a
    # percent-encoded path is checked as Twilio signed it, not as Flask decoded it.
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        return base + raw
    query = request.query_string.decode("utf-8", "replace")
    return base + request.path + (f"?{query}" if query else "")


class _SignedParams:
    """The form as twilio's RequestValidator reads it: it asks getall() first, which Werkzeug's
    MultiDict lacks, so each parameter would cost a raised AttributeError."""

    __slots__ = ("form",)

    def __init__(self, form: MultiDict[str, str]):
        self.form = form

    def __iter__(self) -> Iterator[str]:
        return iter(self.form)

    def getall(self, name: str) -> list[str]:
        return self.form.getlist(name)


def twilio_signature(token: str, url: str, pairs: list[tuple[str, str]]) -> bytes:
    """X-Twilio-Signature for `url` and the form's (name, value) `pairs`, as Twilio computes it
    and twilio's RequestValidator.compute_signature does (the names sorted, each one's values
    sorted and counted once: the pairs' sorted set), in a fifth of its time: Base64 of the
    HMAC-SHA1, keyed with the auth token, of the URL and each name and value."""
    signed = url + "".join(name + value for name, value in sorted(set(pairs)))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest())


@blueprint.before_request
def require_twilio_signature() -> Response | None:
    """403 unless the request carries a valid signature for its URL and parameters; then a
    parameter given twice, in the query or the form, is refused (see _refuse_repeated)."""
    signature = request.headers.get(SIGNATURE_HEADER, "")
    form = request.form if request.method == "POST" else MultiDict()
    pairs = list(form.items(multi=True))
    token = services().secrets.webhook_auth_token
    url = signed_url()
    # Fast path: the URL exactly as rebuilt (one HMAC). twilio's validate() then also tries the
    # URL with and without an explicit port, as Twilio may have signed either.
    expected = twilio_signature(token, url, pairs)
    exact = hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
    if not signature or not (
        exact or RequestValidator(token).validate(url, _SignedParams(form), signature)
    ):
        log.warning("webhook %s refused: missing or invalid signature", logged_path())
        abort(403, description="invalid or missing X-Twilio-Signature")
    services().prompts.refresh()  # a team's edited prompt is live within a second
    repeated = repeated_name(request.args.items(multi=True)) or repeated_name(pairs)
    if repeated is not None:
        log.warning(  # %r: a name is the sender's words, and may hold a line break
            "webhook %s refused: parameter %r sent more than once", request.url_rule, repeated[:64]
        )
        return _refuse_repeated()
    return None


def _refuse_repeated() -> Response:
    """Twilio sends each parameter once: a signed request with one twice was not built by
    Twilio (or was changed on the way), and which value counts would be a guess. It decides
    nothing: a caller hears the apology any failure ends with, the missed-call number still
    rejects unanswered, and a status callback is a 400 (Twilio's debugger shows it)."""
    ivr = services()
    if request.endpoint in ("webhooks.call_status", "webhooks.sms_status"):
        abort(400, description="a parameter is given twice")
    if request.endpoint == "webhooks.missed_call":
        return _reject_busy()
    locale = (request.view_args or {}).get("locale")
    return _say_and_hang_up(
        call_locale(locale) if locale else ivr.prompts.default_locale, "call.error"
    )


def _field(name: str, limit: int = 64) -> str:
    """A form field as Twilio sends it; over-long values are treated as absent."""
    value = request.form.get(name, "")
    return value if len(value) <= limit else ""


def caller_country() -> str | None:
    """The caller's country: Twilio's FromCountry when it sent one, else from the caller ID."""
    country = _field("FromCountry", 2).upper()
    if len(country) == 2 and country.isalpha():
        return country
    return phone.country_of_caller(_field("From"))


# Gather actions, relative to /voice/code/<sid>/<locale>/ and …/reveal alike.
REVEAL_ACTION = "reveal"
REPEAT_ACTION = "reveal?repeat=1"


def call_locale(locale: str) -> str:
    """The locale named in a call's URL, if we still have its prompts; else the default (a
    catalog removed while the call rang must not cost the caller their code)."""
    return services().prompts.catalog(locale).locale


def _memoized(key: tuple[str, ...], build: Callable[[], VoiceResponse]) -> Response:
    """A TwiML document that depends only on `key` (its kind, prompt, locale): rendered once
    per app. Locales come from the catalogs, so the memo stays small."""
    ivr = services()
    rendered = ivr.rendered_twiml
    if ivr.rendered_twiml_version != ivr.prompts.version:  # the prompts were reloaded
        rendered.clear()
        ivr.rendered_twiml_version = ivr.prompts.version
    text = rendered.get(key)
    if text is None:
        text = rendered[key] = str(build())
    return Response(text, mimetype="text/xml")


def _say_and_hang_up(locale: str, prompt: str) -> Response:
    def build() -> VoiceResponse:
        response = VoiceResponse()
        ivr = services()
        ivr.prompts.speak(response, locale, prompt, app_name=ivr.settings.app_name)
        response.hangup()
        return response

    return _memoized(("say-and-hang-up", prompt, locale), build)


# -- the inbound number: the IVR flows ---------------------------------------------------------


SIMULATOR_PARAMETER = "sim"


def _call_info() -> CallInfo | None:
    """The call this request is about, or None when Twilio's CallSid is missing or garbage. A
    console simulator's call says so with a sealed token in its first URL (see simulate)."""
    call_sid = _field("CallSid")
    if not is_call_sid(call_sid):
        return None
    trial = None
    token = request.args.get(SIMULATOR_PARAMETER)
    if token:
        opened = services().flows.states.open_trial(call_sid, token)
        if opened is not None:
            trial = Trial(*opened)
    return CallInfo(call_sid, _field("From"), _field("To"), caller_country(), trial)


def _flow_turn(run: Callable[[FlowEngine, CallInfo], VoiceResponse]) -> Response:
    """Run one turn of the caller's flow; whatever fails, the caller hears a polite message and
    goes where the flow's on_error says (or hears goodbye), never Twilio's "application error"."""
    ivr = services()
    call = _call_info()
    if call is None:
        return _say_and_hang_up(ivr.prompts.default_locale, "call.error")
    try:
        return twiml(run(ivr.flows, call))
    except Exception:
        log.exception("call %s: flow turn failed", call.call_sid)
        return twiml(ivr.flows.fallback(call))


@blueprint.post("/voice/incoming")
def incoming() -> Response:
    """A call to one of our numbers: the flow chosen by the called number answers."""
    return _flow_turn(lambda flows, call: flows.answer(call))


@blueprint.post("/voice/flow/<int:step>")
def flow_step(step: int) -> Response:
    """The caller's keys (or silence) for the question asked at `step`."""
    digits = _field("Digits", _MAX_DIGITS_FIELD)
    sealed = _sealed_state()
    return _flow_turn(lambda flows, call: flows.step(call, step, digits or None, sealed=sealed))


@blueprint.post("/voice/flow/<int:step>/dial")
def flow_dial_result(step: int) -> Response:
    """A <Dial> to an agent ended (answered, busy, no answer…)."""
    status = _field("DialCallStatus")
    sealed = _sealed_state()
    return _flow_turn(
        lambda flows, call: flows.step(call, step, None, dial_status=status, sealed=sealed)
    )


def _sealed_state() -> str | None:
    """The call state the step's URL carries (see flows.state); the engine checks it opens."""
    return request.args.get(SEALED_STATE_PARAMETER) or None


# -- the verification call -----------------------------------------------------------------------


def _press_a_key(
    locale: str, prompt: str, action: str, app_name: str | None = None, voice: str | None = None
) -> Gather:
    """A one-key Gather whose prompt the caller may interrupt; any key counts, # and * too."""
    gather = Gather(
        input="dtmf",
        num_digits=1,
        finish_on_key="",
        timeout=_KEY_TIMEOUT_SECONDS,
        action=action,
        method="POST",
        action_on_empty_result=False,
    )
    ivr = services()
    ivr.prompts.speak(
        gather,
        locale,
        prompt,
        voice=voice,
        recorded=app_name is None,  # a recording says the deployment's name, not a Service's
        app_name=app_name or ivr.settings.app_name,
    )
    return gather


@blueprint.post("/voice/code/<sid>/<locale>/")
@blueprint.post("/voice/code/<sid>/<locale>/<service_sid>/")
def code_call_answered(sid: str, locale: str, service_sid: str = "") -> Response:
    """The callee answered: ask for a key press before anything of the code is said (unless
    the call's Verify Service says no key press is needed: DtmfInputRequired=false)."""
    locale = call_locale(locale)
    if not is_sid(sid):
        return _say_and_hang_up(locale, "otp.call.unavailable")
    name, asks_for_a_key, voice = None, True, None
    if service_sid:  # a Verify Service's call: its name (or the verification's own), its voice
        ivr = services()
        named_default = service_sid == NAMED_DEFAULT_SERVICE
        service = (
            ivr.verify_services.default if named_default else ivr.verify_services.get(service_sid)
        )
        verification = ivr.verifications.store.get(sid) if service is not None else None
        expected = None if named_default else service_sid
        if service is None or verification is None or verification.service_sid != expected:
            return _say_and_hang_up(locale, "otp.call.unavailable")
        name = verification.custom_friendly_name or service.friendly_name
        asks_for_a_key, voice = service.dtmf_input_required, service.tts_name

    def greeting() -> VoiceResponse:
        response = VoiceResponse()
        if not asks_for_a_key:
            response.redirect(f"{REVEAL_ACTION}?answered=1", method="POST")
            return response
        # Said twice: a person who missed the first words gets a second chance to press a key.
        response.append(_press_a_key(locale, "otp.call.greeting", REVEAL_ACTION, name, voice))
        response.append(_press_a_key(locale, "otp.call.greeting", REVEAL_ACTION, name, voice))
        services().prompts.speak(response, locale, "otp.call.no_input", voice=voice)
        response.hangup()
        return response

    if name is not None:
        return twiml(greeting())
    return _memoized(("code-call-greeting", locale), greeting)


@blueprint.post("/voice/code/<sid>/<locale>/reveal")
@blueprint.post("/voice/code/<sid>/<locale>/<service_sid>/reveal")
def code_call_key_pressed(sid: str, locale: str, service_sid: str = "") -> Response:
    """A key was pressed (or none was asked for): read the code digit by digit, twice, then
    offer to repeat it."""
    ivr = services()
    locale = call_locale(locale)
    digits = _field("Digits", _MAX_DIGITS_FIELD)
    repeat = request.args.get("repeat") == "1"
    service = ivr.verify_services.get(service_sid) if service_sid else None
    voice = service.tts_name if service is not None else None
    answered = request.args.get("answered") == "1" and not repeat
    if answered and service is not None and not service.dtmf_input_required:
        digits = "answered"  # the Service reads the code without a key press
    if not digits or (repeat and digits != "1"):
        return _say_and_hang_up(locale, "otp.call.goodbye")
    call_sid = _field("CallSid")
    if not _TWILIO_SID.fullmatch(call_sid):
        return _say_and_hang_up(locale, "call.error")
    reveal = ivr.verifications.reveal(sid, call_sid)
    if reveal.outcome == "stranger":
        log.warning("verification %s: code asked for by a call we did not place", sid)
    if reveal.outcome != "ok" or reveal.code is None:
        return _say_and_hang_up(locale, "otp.call.unavailable")
    response = VoiceResponse()
    ivr.prompts.speak_code(
        response, locale, "otp.call.code_intro", reveal.code, times=2, voice=voice
    )
    if reveal.readings_left:
        response.append(_press_a_key(locale, "otp.call.repeat_offer", REPEAT_ACTION, voice=voice))
    ivr.prompts.speak(response, locale, "otp.call.goodbye", voice=voice)
    response.hangup()
    return twiml(response)


# -- missed calls and flash calls ----------------------------------------------------------------


def _reject_busy() -> Response:
    def build() -> VoiceResponse:
        response = VoiceResponse()
        response.reject(reason="busy")
        return response

    return _memoized(("reject-busy",), build)


@blueprint.post("/voice/missed-call")
def missed_call() -> Response:
    """A user rang our missed-call number. The answer is always <Reject reason="busy">, first
    and only: Twilio never answers (nor bills) the call, and the caller learns nothing. The
    caller ID, if it can be trusted, approves their pending missed-call verification."""
    try:
        services().verifications.missed_call(
            caller=_field("From"),
            called=_field("To"),
            call_sid=_field("CallSid"),
            stir_verstat=_stir_verstat(),
        )
    except Exception:  # Redis down…: the caller is still rejected, and may simply ring again
        log.exception("missed call: not recorded")
    return _reject_busy()


def _stir_verstat() -> str:
    """Twilio's StirVerstat; an over-long value is garbage, never "none sent" (which may be
    trusted): it reads as a failed validation."""
    value = request.form.get("StirVerstat", "")
    return value if len(value) <= 64 else "invalid"


@blueprint.post("/voice/flash-call")
def flash_call_answered() -> Response:
    """A flash call was answered before we hung up: hang up now (its caller ID was the code)."""

    def build() -> VoiceResponse:
        response = VoiceResponse()
        response.hangup()
        return response

    return _memoized(("hang-up",), build)


# -- delivery status -----------------------------------------------------------------------------


def _record_delivery(sid: str, sid_field: str, status_field: str) -> Response:
    provider_sid = _field(sid_field)
    if _TWILIO_SID.fullmatch(provider_sid):
        services().verifications.record_delivery(
            sid, provider_sid, _field(status_field), _field("ErrorCode")
        )
    return Response(status=204)


@blueprint.post("/voice/status/<sid>")
def call_status(sid: str) -> Response:
    """Twilio's call progress (initiated, ringing, in-progress, completed, busy…)."""
    return _record_delivery(sid, "CallSid", "CallStatus")


@blueprint.post("/sms/status/<sid>")
def sms_status(sid: str) -> Response:
    """Twilio's message progress (queued, sent, delivered, undelivered…)."""
    return _record_delivery(sid, "MessageSid", "MessageStatus")
