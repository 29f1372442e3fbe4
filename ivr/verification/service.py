"""Start, deliver, check and cancel verifications: the core that the API, the webhooks and the
flow engine share. It knows nothing of Flask; the web edge turns its errors into HTTP answers.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

from ivr import logs, phone
from ivr.config import Rate
from ivr.metrics import metrics
from ivr.prompts import PromptCatalogs, UnknownLocale
from ivr.telephony import Carrier, CarrierError, Receipt
from ivr.verification import callerid
from ivr.verification.codes import CodeSecrets, SealError, generate_code
from ivr.verification.limits import SendLimiter, Window
from ivr.verification.models import (
    SID_SHAPE,
    Channel,
    Status,
    Verification,
    is_call_sid,
    is_sid,
)
from ivr.verification.stats import VerificationStats
from ivr.verification.store import StartResult, VerificationStore, missed_call_scope

log = logging.getLogger(__name__)

# Statuses a carrier status callback may set on an attempt (Twilio's call and message statuses).
DELIVERY_STATUSES = frozenset(
    {
        "queued",
        "initiated",
        "ringing",
        "in-progress",
        "completed",
        "busy",
        "no-answer",
        "canceled",
        "failed",
        "accepted",
        "scheduled",
        "sending",
        "sent",
        "delivered",
        "undelivered",
        "read",
    }
)
_CODE_LENGTHS = range(4, 11)
FLASH_CALL_SCOPE = "flash-call"  # flash calls' pending pointer: never a call or SMS code's
# A CallSid our missed-call webhook took is remembered this long (replays are refused).
_SEEN_CALL_MS = 30 * 86400 * 1000


class VerificationError(Exception):
    """Base of what the core refuses; `reason` is machine-readable, `detail` for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class InvalidRequest(VerificationError):
    """A field is missing or wrong; `field` names it."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(reason, detail)
        self.field = field


class RateLimited(VerificationError):
    """Too many sends (scope: number, prefix, token) or wrong codes (scope: check_failures)."""

    def __init__(self, scope: str, retry_after: int, detail: str):
        super().__init__("rate_limited", detail)
        self.scope = scope
        self.retry_after = retry_after


class NotFound(VerificationError):
    """No verification answers the sid (or, by number, none is pending for it)."""

    def __init__(self, detail: str = "no verification with this sid") -> None:
        super().__init__("not_found", detail)


class OtherNumber(NotFound):
    """The sid names a verification, but of another number than the `to` given with it: no
    code is checked (a code sent to one phone never approves another). The other number is
    not said."""

    def __init__(self) -> None:
        super().__init__("this verification is for another number")
        self.reason = "number_mismatch"


# A sid that is not a sid at all: said so, with what one looks like.
NOT_A_SID = f"no verification with this sid: a sid is {SID_SHAPE}"
NOTHING_PENDING = "no verification is pending for this number"


class NotPending(VerificationError):
    """The verification is final: a code never works on it again."""

    def __init__(self, sid: str, status: Status):
        super().__init__("not_pending", f"the verification is {status}, no longer pending")
        self.sid = sid
        self.status = status


class NotCheckable(VerificationError):
    """A missed-call verification: the user's call approves it, never a code."""

    def __init__(self, sid: str):
        super().__init__(
            "not_checkable", "a missed-call verification is approved by the user's call, not a code"
        )
        self.sid = sid


class MissedCallsBusy(VerificationError):
    """Every missed-call number already has a verification of this phone waiting for its call."""

    def __init__(self, pool_size: int):
        super().__init__(
            "missed_call_waiting",
            f"this phone already has a verification waiting for its call on each of our "
            f"{pool_size} missed-call number(s); ring it, or wait for it to expire",
        )


class DeliveryFailed(VerificationError):
    """The carrier did not take the call or SMS; the verification was left consistent."""

    def __init__(self, error: CarrierError, verification: Verification | None):
        super().__init__(error.kind, error.detail)
        self.carrier_error = error
        self.verification = verification


class CallbackUrls(Protocol):
    """Where the carrier reaches our webhooks; built by the web edge from PUBLIC_BASE_URL."""

    def call_answer(self, sid: str, locale: str) -> str: ...
    def call_status(self, sid: str) -> str: ...
    def sms_status(self, sid: str) -> str: ...
    def flash_call_answer(self) -> str: ...


class EventPublisher(Protocol):
    """Where a verification's end is announced (ivr.events.EventOutbox)."""

    def publish(self, event_type: str, data: dict[str, object]) -> str: ...


@dataclass(frozen=True)
class CodePolicy:
    length: int
    ttl_seconds: int
    max_attempts: int
    failure_budget: Rate  # wrong codes per number, across verifications
    retention_seconds: int  # how long a finished verification stays readable
    max_reveals_per_call: int = 4  # the first reading and up to three "press 1 to hear again"


@dataclass(frozen=True)
class CallChannels:
    """The channels where a call is the proof: the numbers users ring (missed call) and the
    pool our flash calls come from, whose last digits are the code."""

    missed_call_numbers: tuple[str, ...] = ()
    missed_call_ttl_seconds: int = 300
    min_attestation: str = ""  # "", "C", "B" or "A": see callerid.assess
    flash_call_numbers: tuple[str, ...] = ()
    flash_code_length: int = 4
    flash_ring_seconds: int = 15
    flash_max_attempts: int = 3
    flash_ttl_seconds: int = 300


@dataclass(frozen=True)
class SendLimits:
    per_number: Rate
    per_prefix: Rate
    per_client: Rate


@dataclass(frozen=True)
class CheckOutcome:
    sid: str
    status: Status
    to: str

    @property
    def valid(self) -> bool:
        return self.status is Status.APPROVED


@dataclass(frozen=True)
class Reveal:
    """What a verification call may say: the code, or why not (gone, stranger, exhausted)."""

    outcome: str
    code: str | None = None
    readings_left: int = 0  # how many more times this call may hear it


class VerificationService:
    def __init__(
        self,
        *,
        store: VerificationStore,
        limiter: SendLimiter,
        carrier: Carrier,
        code_secrets: CodeSecrets,
        prompts: PromptCatalogs,
        number_policy: phone.NumberPolicy,
        urls: CallbackUrls,
        caller_id: str,
        app_name: str,
        code_policy: CodePolicy,
        send_limits: SendLimits,
        sms_origin_domain: str | None = None,
        call_channels: CallChannels | None = None,
        events: EventPublisher | None = None,
        simulated_carrier: Carrier | None = None,
        stats: VerificationStats | None = None,
    ):
        self.store = store
        self.limiter = limiter
        self.carrier = carrier
        self.simulated_carrier = simulated_carrier
        self.stats = stats
        self.secrets = code_secrets
        self.prompts = prompts
        self.number_policy = number_policy
        self.urls = urls
        self.caller_id = caller_id
        self.app_name = app_name
        self.code_policy = code_policy
        self.send_limits = send_limits
        self.sms_origin_domain = sms_origin_domain
        self.call_channels = call_channels or CallChannels()
        self.events = events

    # -- starting and sending ------------------------------------------------------------------

    def start(
        self,
        *,
        to: object,
        channel: object,
        locale: object = None,
        country: object = None,
        client_id: str = "anonymous",
        scope: str | None = None,
        simulated: bool = False,
    ) -> Verification:
        """Send a code to `to` on `channel`: a new verification, or a re-send of the pending one
        (the pending one of `scope` when given: an IVR call's codes are its own). A missed call
        sends nothing: the verification waits for the user's call to `call_to`.

        `simulated`: a console simulator's call asks; the code goes to the simulated carrier
        whatever carrier is configured, so a trial never reaches a real phone.

        Raises InvalidRequest, RateLimited or DeliveryFailed.
        """
        if channel not in tuple(Channel):
            raise InvalidRequest(
                "channel", "invalid_channel", f"channel must be one of: {', '.join(Channel)}"
            )
        channel = Channel(channel)
        self._require_configured(channel)
        parsed = _parse_number(to, country)
        try:
            number = self._police(parsed, channel)
        except InvalidRequest as exc:  # the policy's refusal (not a malformed number) is counted
            metrics().sends_refused.labels("policy", exc.reason).inc()
            logs.bind(outcome=exc.reason)
            if self.stats is not None:
                self.stats.failed(channel, parsed.country, "number_refused")
            raise
        try:
            chosen_locale = self.prompts.resolve_locale(locale, number.country)
        except UnknownLocale as exc:
            raise InvalidRequest("locale", "unknown_locale", str(exc)) from None
        try:
            self._count_send(number, client_id)
        except RateLimited as exc:
            metrics().sends_refused.labels("limit", exc.scope).inc()
            logs.bind(outcome=f"rate_limited_{exc.scope}")
            if self.stats is not None:
                self.stats.failed(channel, number.country or "??", "rate_limited")
            raise
        if channel is Channel.MISSED_CALL:
            waiting = self._await_missed_call(number, chosen_locale)
            if self.stats is not None:
                self.stats.started(channel, number.country or "??", waiting.sid)
            return waiting

        started, code = self._start_with_code(number, channel, chosen_locale, scope)
        sid = started.verification.sid
        logs.bind(verification_sid=sid, outcome="created" if started.created else "resent")
        # From here to the settle below, the send is `requested` in Redis (a worker dying in
        # between leaves it so: started minus finished shows it on /metrics).
        counted = metrics()
        counted.sends_started.labels(channel).inc()
        if started.created and self.stats is not None:
            self.stats.started(channel, number.country or "??", sid)
        try:
            carrier = self.simulated_carrier if simulated else self.carrier
            if carrier is None:
                raise CarrierError("rejected", "no simulated carrier for a simulated call")
            receipt = self._deliver(sid, number.e164, channel, chosen_locale, code, carrier)
        except CarrierError as exc:
            log.warning("verification %s: %s send failed: %s", sid, channel, exc.detail)
            status = self.store.settle_send(
                sid,
                started.attempt_index,
                status="failed",
                error=exc.detail,
            )
            counted.sends_finished.labels(channel, "failed").inc()
            logs.bind(outcome=f"carrier_{exc.kind}")
            failed = self.store.get(sid)
            if status is Status.FAILED and failed is not None:
                self._announce(failed)
            if self.stats is not None:
                self.stats.failed(channel, number.country or "??", "carrier_error")
            raise DeliveryFailed(exc, failed) from None
        settled = self.store.settle(
            sid, started.attempt_index, status=receipt.status, provider_sid=receipt.provider_sid
        )
        counted.sends_finished.labels(channel, "accepted").inc()
        if settled.first_delivery and self.stats is not None:  # once per verification
            self.stats.delivered(channel, number.country)
        return self._require(sid)

    def _start_with_code(
        self, number: phone.PhoneNumber, channel: Channel, locale: str, scope: str | None
    ) -> tuple[StartResult, str]:
        """Store a new verification with a fresh code, or take the pending one's code for a
        re-send; the result and the code to deliver."""
        tag = self.secrets.routing_tag(number.e164)
        new_sid = f"VE{tag}{secrets.token_hex(12)}"
        fields: dict[str, str | int] = {}
        ttl_seconds = self.code_policy.ttl_seconds
        if channel is Channel.FLASH_CALL:
            scope = FLASH_CALL_SCOPE
            flash = self.call_channels
            code = secrets.choice(flash.flash_call_numbers)[-flash.flash_code_length :]
            fields = {
                "code_length": flash.flash_code_length,
                "max_attempts": flash.flash_max_attempts,
            }
            ttl_seconds = flash.flash_ttl_seconds
        else:
            code = generate_code(self.code_policy.length)
        started = self.store.start_or_resend(
            tag=tag,
            new_sid=new_sid,
            to=number.e164,
            channel=channel,
            locale=locale,
            digest=self.secrets.digest(code),
            sealed=self.secrets.seal(new_sid, code),
            ttl_ms=ttl_seconds * 1000,
            retention_ms=self.code_policy.retention_seconds * 1000,
            scope=scope,
            fields=fields,
        )
        assert started is not None  # a re-send never answers "taken"
        self._track(started)
        sid = started.verification.sid
        if not started.created:
            code = self.secrets.unseal(sid, started.sealed_code)
            if channel is Channel.FLASH_CALL and self._flash_number_for(code) is None:
                # The pool was edited while this one was pending: no number of ours can call
                # with its code any more. End it (its re-send never happened), start anew.
                self._end_unsendable(sid, started.attempt_index)
                return self._start_with_code(number, channel, locale, scope)
        log.info(
            "verification %s: %s via %s to %s",
            sid,
            "created" if started.created else "re-send",
            channel,
            phone.masked(number.e164),
        )
        return started, code

    def _end_unsendable(self, sid: str, attempt_index: int) -> None:
        self.store.settle_send(
            sid, attempt_index, status="failed", error="no flash-call number ends in its code"
        )
        ended = self.store.cancel(sid)
        if ended is not None and ended[0]:
            self._announce_sid(sid)

    def _await_missed_call(self, number: phone.PhoneNumber, locale: str) -> Verification:
        """A verification that the user's call to one of our missed-call numbers approves.

        Always a new one, never the pending one of an earlier request: whoever holds a missed-call
        verification's sid is approved by the phone's call, so it must not be handed to a second
        asker. Each waits on a number of the pool of its own (a call approves the verification
        waiting on the number it rang); when all of them are taken for this phone, MissedCallsBusy.
        """
        tag = self.secrets.routing_tag(number.e164)
        pool = list(self.call_channels.missed_call_numbers)
        secrets.SystemRandom().shuffle(pool)  # spread load over the pool
        for call_to in pool:
            started = self.store.start_or_resend(
                tag=tag,
                new_sid=f"VE{tag}{secrets.token_hex(12)}",
                to=number.e164,
                channel=Channel.MISSED_CALL,
                locale=locale,
                digest="",  # no code: only a call from the number approves it
                sealed="",
                ttl_ms=self.call_channels.missed_call_ttl_seconds * 1000,
                retention_ms=self.code_policy.retention_seconds * 1000,
                scope=missed_call_scope(call_to),
                resend=False,
                first_status="awaiting_call",
                fields={"call_to": call_to},
            )
            if started is not None:
                self._track(started)
                log.info(
                    "verification %s: awaiting a call from %s",
                    started.verification.sid,
                    phone.masked(number.e164),
                )
                return started.verification
        raise MissedCallsBusy(len(pool))

    def _require_configured(self, channel: Channel) -> None:
        variable = {
            Channel.MISSED_CALL: ("MISSED_CALL_NUMBER", self.call_channels.missed_call_numbers),
            Channel.FLASH_CALL: ("FLASH_CALL_NUMBERS", self.call_channels.flash_call_numbers),
        }.get(channel)
        if variable is not None and not variable[1]:
            raise InvalidRequest(
                "channel",
                "channel_unavailable",
                f"{channel} is not set up on this server ({variable[0]} is unset)",
            )

    def accept_number(self, to: object, country: object, channel: str) -> phone.PhoneNumber:
        """Parse and police a destination; InvalidRequest(field "to" or "country") if refused."""
        return self._police(_parse_number(to, country), channel)

    def _police(self, number: phone.PhoneNumber, channel: str) -> phone.PhoneNumber:
        """`number` if the number policy lets us send to it on `channel`, else InvalidRequest."""
        try:
            return self.number_policy.check(number, channel)
        except phone.NumberRefused as exc:
            raise InvalidRequest("to", exc.reason, exc.detail) from None

    def _count_send(self, number: phone.PhoneNumber, client_id: str) -> None:
        refusal = self.limiter.acquire(
            [
                Window("number", number.e164, self.send_limits.per_number),
                Window("prefix", number.prefix, self.send_limits.per_prefix),
                Window("client", client_id, self.send_limits.per_client),
            ]
        )
        if refusal:
            raise RateLimited(
                refusal.scope,
                refusal.retry_after_seconds,
                f"too many codes sent (per {refusal.scope}); "
                f"try again in {refusal.retry_after_seconds} s",
            )

    def _deliver(
        self, sid: str, to: str, channel: Channel, locale: str, code: str, carrier: Carrier
    ) -> Receipt:
        if channel is Channel.FLASH_CALL:
            # Rings briefly from the pool number whose last digits are the code; hangs up if
            # answered. The caller ID is the code: nothing else about it is sent.
            from_ = self._flash_number_for(code)
            assert from_ is not None  # _start_with_code made sure
            return carrier.place_call(
                to=to,
                from_=from_,
                url=self.urls.flash_call_answer(),
                status_callback=self.urls.call_status(sid),
                ring_seconds=self.call_channels.flash_ring_seconds,
            )
        if channel is Channel.CALL:
            # The call's URL holds only the sid and the language: the code is fetched, sealed,
            # when the callee presses a key.
            return carrier.place_call(
                to=to,
                from_=self.caller_id,
                url=self.urls.call_answer(sid, locale),
                status_callback=self.urls.call_status(sid),
            )
        body = self.prompts.text(locale, "otp.sms.body", app_name=self.app_name, code=code)
        if self.sms_origin_domain:  # WebOTP: lets the browser offer the code for autofill
            body += f"\n\n@{self.sms_origin_domain} #{code}"
        return carrier.send_sms(
            to=to, from_=self.caller_id, body=body, status_callback=self.urls.sms_status(sid)
        )

    def _flash_number_for(self, code: str) -> str | None:
        pool = self.call_channels.flash_call_numbers
        return next((number for number in pool if number.endswith(code)), None)

    # -- checking ----------------------------------------------------------------------------

    def check(
        self, *, code: object, sid: object = None, to: object = None, country: object = None
    ) -> CheckOutcome:
        """Check a code against the verification `sid`, or the number's pending one.

        Raises InvalidRequest, NotFound, NotPending or RateLimited (the number's failure budget).
        """
        if not isinstance(code, str) or not code.isascii() or not code.isdigit():
            raise InvalidRequest("code", "invalid_code", "code must be a string of digits")
        if len(code) not in _CODE_LENGTHS:
            raise InvalidRequest("code", "invalid_code", "code must have 4 to 10 digits")
        if sid is None and to is None:
            raise InvalidRequest("to", "missing_field", "give 'to' or 'sid'")
        lookup: dict[str, str] = {}
        if to is not None:  # with a sid too, the verification must be for this number
            e164 = _parse_number(to, country).e164
            lookup.update(tag=self.secrets.routing_tag(e164), to=e164)
            # A flash-call code is shorter than any call or SMS code (4-5 digits against 6-10):
            # its length says which of the number's pending verifications it is for.
            flash = self.call_channels
            if flash.flash_call_numbers and len(code) == flash.flash_code_length:
                lookup["scope"] = FLASH_CALL_SCOPE
        if sid is not None:
            if not is_sid(sid):
                raise InvalidRequest("sid", "invalid_sid", f"sid must be {SID_SHAPE}")
            lookup["sid"] = str(sid)
        result = self.store.check(
            digest=self.secrets.digest(code),
            max_attempts=self.code_policy.max_attempts,
            failure_budget=self.code_policy.failure_budget,
            **lookup,
        )
        metrics().checks.labels(result.outcome).inc()
        logs.bind(verification_sid=result.sid, outcome=result.outcome)
        if result.outcome == "other_number":
            raise OtherNumber()
        if result.outcome == "not_found" or result.sid is None or result.status is None:
            raise NotFound("no verification with this sid" if sid else NOTHING_PENDING)
        if result.outcome == "not_checkable":
            raise NotCheckable(result.sid)
        ended_now = result.outcome in ("approved", "expired") or (
            result.outcome == "wrong" and result.status is Status.MAX_ATTEMPTS_REACHED
        )
        if ended_now:
            self._announce_sid(result.sid)
            self._count_outcome(result.sid, result.outcome)
        if result.outcome in ("not_pending", "expired"):
            raise NotPending(result.sid, result.status)
        if result.outcome == "throttled":
            wait = max(1, -(-result.retry_after_ms // 1000))
            raise RateLimited(
                "check_failures",
                wait,
                f"too many wrong codes for this number; try again in {wait} s",
            )
        log.info("verification %s: check %s", result.sid, result.outcome)
        return CheckOutcome(result.sid, result.status, result.to or "")

    # -- reading and ending --------------------------------------------------------------------

    def get(self, sid: object) -> Verification:
        if not is_sid(sid):
            raise NotFound(NOT_A_SID)
        return self._require(str(sid))

    def cancel(self, sid: object) -> Verification:
        """Cancel a pending verification; NotPending if it had already ended."""
        if not is_sid(sid):
            raise NotFound(NOT_A_SID)
        result = self.store.cancel(str(sid))
        if result is None:
            raise NotFound()
        ended_now, status = result
        verification = self._require(str(sid))
        if ended_now:
            self._announce(verification)
            if status is Status.EXPIRED and self.stats is not None:  # found past its expiry
                self.stats.failed(verification.channel, _country(verification.to), "expired")
        if not ended_now or status is not Status.CANCELED:
            raise NotPending(str(sid), status)
        log.info("verification %s: canceled", sid)
        return verification

    def _require(self, sid: str) -> Verification:
        verification = self.store.get(sid)
        if verification is None:
            raise NotFound()
        return verification

    # -- what the webhooks need ----------------------------------------------------------------

    def reveal(self, sid: str, call_sid: str) -> Reveal:
        """The code for the call we placed for `sid`, a bounded number of times per call."""
        if not is_sid(sid):
            return Reveal("gone")
        result = self.store.reveal(sid, call_sid, self.code_policy.max_reveals_per_call)
        if result.outcome != "ok" or result.sealed is None:
            return Reveal(result.outcome)
        try:
            code = self.secrets.unseal(sid, result.sealed)
        except SealError:
            log.error("verification %s: sealed code does not open (SECRET_KEY changed?)", sid)
            return Reveal("gone")
        return Reveal("ok", code, result.readings_left)

    def missed_call(self, *, caller: str, called: str, call_sid: str, stir_verstat: str) -> str:
        """A call to one of our missed-call numbers (already rejected, unanswered): approve the
        caller's pending missed-call verification if the caller ID may be trusted. The outcome,
        for logs and counters; nothing is ever said to the caller."""
        outcome = self._match_missed_call(caller, called, call_sid, stir_verstat)
        self.store.count_missed_call(outcome)
        return outcome

    def _match_missed_call(self, caller: str, called: str, call_sid: str, stir_verstat: str) -> str:
        if not is_call_sid(call_sid):
            return "invalid_call"
        called_number = phone.parse_caller_id(called)
        if (
            called_number is None
            or called_number.e164 not in self.call_channels.missed_call_numbers
        ):
            return "unknown_number"
        ours = called_number.e164
        number = phone.parse_caller_id(caller)
        if number is None:
            return "invalid_caller"  # withheld, anonymous, garbage: nothing to match
        trust = callerid.assess(stir_verstat, self.call_channels.min_attestation)
        outcome, sid = self.store.approve_by_call(
            tag=self.secrets.routing_tag(number.e164),
            caller=number.e164,
            called=ours,
            call_sid=call_sid,
            attestation=trust.attestation,
            trusted=trust.trusted,
            remember_ms=_SEEN_CALL_MS,
        )
        log.info(
            "missed call from %s to %s: %s (caller ID attestation %s)%s",
            phone.masked(number.e164),
            phone.masked(ours),
            outcome,
            trust.attestation,
            f", verification {sid}" if sid else "",
        )
        if sid and outcome in ("approved", "expired"):
            self._announce_sid(sid)
            self._count_outcome(sid, outcome)
        elif outcome == "refused" and self.stats is not None:
            self.stats.failed(Channel.MISSED_CALL, number.country or "??", "caller_id_untrusted")
        return outcome

    # -- announcing ends -----------------------------------------------------------------------

    def _announce(self, verification: Verification) -> None:
        """Tell the app (EVENTS_WEBHOOK_URL) that a verification ended; never fails the caller:
        the app can always read GET /v1/verifications/{sid}."""
        if self.events is None or verification.status is Status.PENDING:
            return
        try:
            self.events.publish(f"verification.{verification.status}", verification.to_api())
        except Exception:
            log.exception("verification %s: event not queued", verification.sid)

    def _track(self, started: StartResult) -> None:
        """A new verification joins the expiry sweep (only when events are announced)."""
        if self.events is not None and started.created:
            self.store.track_expiry(started.verification)

    def expire_due(self, limit: int = 100, lease_ms: int = 60_000) -> int:
        """End verifications past their expiry that nobody checked, and announce
        verification.expired for each; how many this call ended. Run by the events thread."""
        ended = 0
        for sid in self.store.claim_expired(limit, lease_ms):
            result = self.store.cancel(sid, only_if_expired=True)
            if result is not None and result[0]:
                ended += 1
                self._announce_sid(sid)
                self._count_outcome(sid, "expired")
            self.store.untrack_expiry(sid)  # ended now, earlier, or gone: off the list
        return ended

    def _announce_sid(self, sid: str) -> None:
        if self.events is not None:
            verification = self.store.get(sid)
            if verification is not None:
                self._announce(verification)

    def record_delivery(self, sid: str, provider_sid: str, status: str, error: str = "") -> bool:
        """Apply a carrier status callback to its send attempt; False when it does not apply."""
        if not is_sid(sid) or status not in DELIVERY_STATUSES or not provider_sid:
            return False
        update = self.store.record_delivery(sid, provider_sid, status, error[:64])
        # The store tells the first proof of delivery (an SMS sent or delivered, a call
        # answered, a flash call ringing): a verification counts as delivered once.
        if update.first_delivery:
            self._count_outcome(sid, "delivered")
        return update.applied

    def _count_outcome(self, sid: str, outcome: str) -> None:
        """Count what became of a verification on the dashboard: delivered, approved (with its
        time) or failed. Never fails the caller: the verification itself went through."""
        if self.stats is None:
            return
        try:
            verification = self.store.get(sid)
        except Exception:
            log.warning("verification %s: %s not counted", sid, outcome, exc_info=True)
            return
        if verification is None:
            return
        country = _country(verification.to)
        if outcome == "delivered":
            self.stats.delivered(verification.channel, country)
            return
        if outcome == "approved":
            ended_at = verification.updated_at or verification.created_at
            seconds = max(0.0, (ended_at - verification.created_at) / 1000)
            self.stats.approved(verification.channel, country, seconds)
        elif outcome == "expired" or verification.status is Status.EXPIRED:
            self.stats.failed(verification.channel, country, "expired")
        elif verification.status is Status.MAX_ATTEMPTS_REACHED:
            self.stats.failed(verification.channel, country, "max_attempts")


def _country(e164: str) -> str:
    try:
        return phone.parse(e164, None).country or "??"
    except phone.NumberRefused:
        return "??"


def _parse_number(to: object, country: object) -> phone.PhoneNumber:
    """A caller-supplied number, or InvalidRequest naming the field at fault."""
    try:
        return phone.parse(to, country)
    except phone.NumberRefused as exc:
        field = "country" if exc.reason == "invalid_country" else "to"
        raise InvalidRequest(field, exc.reason, exc.detail) from None
