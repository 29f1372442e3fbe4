"""Start, deliver, check and cancel verifications: the core that the API, the webhooks and the
flow engine share. It knows nothing of Flask; the web edge turns its errors into HTTP answers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ivr import keys, logs, phone
from ivr.config import Rate
from ivr.metrics import metrics
from ivr.prompts import PromptCatalogs, UnknownLocale
from ivr.telephony import Carrier, CarrierError, Receipt
from ivr.verification import callerid
from ivr.verification.codes import CodeSecrets, SealError, generate_code
from ivr.verification.limits import Counted, SendLimiter, Window
from ivr.verification.models import (
    SID_SHAPE,
    Channel,
    Status,
    Verification,
    bucket_of,
    is_call_sid,
    is_sid,
)
from ivr.verification.services import VerifyService
from ivr.verification.stats import VerificationStats
from ivr.verification.store import (
    CheckResult,
    Idempotency,
    Repeated,
    SendLimited,
    StartResult,
    VerificationStore,
    missed_call_scope,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

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
_SWEEP_INTERVAL_SECONDS = 5.0  # how often the expiry sweep looks at every bucket
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

    def call_answer(
        self, sid: str, locale: str, service_sid: str = "", custom_name: bool = False
    ) -> str: ...
    def call_status(self, sid: str) -> str: ...
    def sms_status(self, sid: str) -> str: ...
    def flash_call_answer(self) -> str: ...


class EventPublisher(Protocol):
    """Where a verification's end is announced (ivr.events.EventOutbox). The store's scripts
    queue the event with the end itself; this is told which outbox shard just got one."""

    def nudge(self, shard: str) -> None: ...


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
        send_deadline_seconds: int = 120,
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
        self._swept_at = float("-inf")
        self._reconciled_at = float("-inf")
        self.send_deadline_ms = send_deadline_seconds * 1000

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
        idempotency: Idempotency | None = None,
        service: VerifyService | None = None,
        custom_friendly_name: str | None = None,
        custom_code: str | None = None,
    ) -> Verification:
        """Send a code to `to` on `channel`: a new verification, or a re-send of the pending one
        (the pending one of `scope` when given: an IVR call's codes are its own). A missed call
        sends nothing: the verification waits for the user's call to `call_to`.

        `simulated`: a console simulator's call asks; the code goes to the simulated carrier
        whatever carrier is configured, so a trial never reaches a real phone.

        `idempotency`: an Idempotency-Key; a request that came with it before raises Repeated
        (what it did or answered), and acts on nothing.

        `service`: the Verify Service it belongs to (None: the default one). Its pending
        verification of a number, its code length and its name are its own, and so is the
        per-number send limit; `custom_friendly_name` is said instead of its name, and
        `custom_code` (when the Service allows one) is sent instead of a random code.

        Raises InvalidRequest, RateLimited, DeliveryFailed, Repeated or IdempotencyConflict.
        """
        if channel not in tuple(Channel):
            raise InvalidRequest(
                "channel", "invalid_channel", f"channel must be one of: {', '.join(Channel)}"
            )
        channel = Channel(channel)
        self._require_configured(channel)
        parsed = _parse_number(to, country)
        service = None if service is None or service.is_default else service
        if custom_code is not None:
            _require_custom_code(custom_code, service, channel)
        try:
            number = self._police(parsed, channel)  # landlines never get an SMS here
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
        if idempotency is not None:
            idempotency.bucket = self.secrets.bucket(number.e164)
            if (record := self.store.idempotent_record(idempotency)) is not None:
                raise Repeated(record)  # before any limit counts it again
        try:
            ours = _ServiceParts.of(service, custom_friendly_name, custom_code)
            if channel is Channel.MISSED_CALL:
                waiting = self._counted(
                    number,
                    client_id,
                    self._await_missed_call,
                    number,
                    chosen_locale,
                    idempotency,
                    ours,
                )
            else:
                started, code = self._counted(
                    number,
                    client_id,
                    self._start_with_code,
                    number,
                    channel,
                    chosen_locale,
                    scope,
                    idempotency,
                    ours,
                )
        except RateLimited as exc:
            metrics().sends_refused.labels("limit", exc.scope).inc()
            logs.bind(outcome=f"rate_limited_{exc.scope}")
            if self.stats is not None:
                self.stats.failed(channel, number.country or "??", "rate_limited")
            raise
        if channel is Channel.MISSED_CALL:
            if self.stats is not None:
                self.stats.started(channel, number.country or "??", waiting.sid)
            return waiting

        sid = started.verification.sid
        logs.bind(verification_sid=sid, outcome="created" if started.created else "resent")
        # From here to the settle below, the send is `requested` in Redis (a worker dying in
        # between leaves it so: started minus finished shows it on /metrics).
        sent = metrics()
        sent.sends_started.labels(channel).inc()
        if started.created and self.stats is not None:
            self.stats.started(channel, number.country or "??", sid)
        try:
            carrier = self.simulated_carrier if simulated else self.carrier
            if carrier is None:
                raise CarrierError("rejected", "no simulated carrier for a simulated call")
            receipt = self._deliver(sid, number.e164, channel, chosen_locale, code, carrier, ours)
        except CarrierError as exc:
            log.warning("verification %s: %s send failed: %s", sid, channel, exc.detail)
            status = self.store.settle_send(
                sid,
                started.attempt_index,
                status="failed",
                error=exc.detail,
            )
            sent.sends_finished.labels(channel, "failed").inc()
            logs.bind(outcome=f"carrier_{exc.kind}")
            if status is Status.FAILED:
                self._nudge(sid)
            failed = self.store.get(sid)
            if self.stats is not None:
                self.stats.failed(channel, number.country or "??", "carrier_error")
            raise DeliveryFailed(exc, failed) from None
        settled = self.store.settle(
            sid, started.attempt_index, status=receipt.status, provider_sid=receipt.provider_sid
        )
        sent.sends_finished.labels(channel, "accepted").inc()
        if settled.first_delivery and self.stats is not None:  # once per verification
            self.stats.delivered(channel, number.country)
        return self._require(sid)

    def _start_with_code(
        self,
        number: phone.PhoneNumber,
        channel: Channel,
        locale: str,
        scope: str | None,
        idempotency: Idempotency | None = None,
        ours: _ServiceParts | None = None,
    ) -> tuple[StartResult, str]:
        """Store a new verification with a fresh code, or take the pending one's code for a
        re-send; the result and the code to deliver."""
        ours = ours or _ServiceParts()
        fields: dict[str, str | int] = dict(ours.fields)
        ttl_seconds = self.code_policy.ttl_seconds
        if channel is Channel.FLASH_CALL:
            scope = FLASH_CALL_SCOPE + (f":{ours.sid}" if ours.sid else "")
            flash = self.call_channels
            code = secrets.choice(flash.flash_call_numbers)[-flash.flash_code_length :]
            fields |= {"cl": flash.flash_code_length, "ma": flash.flash_max_attempts}
            ttl_seconds = flash.flash_ttl_seconds
        else:
            scope = scope or ours.sid or None  # a Service's own pending verification
            code = ours.custom_code or generate_code(ours.code_length or self.code_policy.length)
        new_sid = self.secrets.new_sid(number.e164, scope)
        started = self.store.start_or_resend(
            new_sid=new_sid,
            to=number.e164,
            channel=channel,
            locale=locale,
            digest=self.secrets.digest(code),
            sealed=self.secrets.seal(new_sid, code),
            ttl_ms=ttl_seconds * 1000,
            retention_ms=self.code_policy.retention_seconds * 1000,
            send_limit=self.send_limits.per_number,
            scope=scope,
            fields=fields,
            idempotency=idempotency,
            limit_scope=ours.sid,
        )
        assert started is not None  # a re-send never answers "taken"
        sid = started.verification.sid
        if not started.created:
            code = self.secrets.unseal(sid, started.sealed_code)
            if channel is Channel.FLASH_CALL and self._flash_number_for(code) is None:
                # The pool was edited while this one was pending: no number of ours can call
                # with its code any more. End it (its re-send never happened), start anew.
                self._end_unsendable(sid, started.attempt_index)
                return self._start_with_code(number, channel, locale, scope, idempotency, ours)
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
            self._nudge(sid)

    def _await_missed_call(
        self,
        number: phone.PhoneNumber,
        locale: str,
        idempotency: Idempotency | None = None,
        ours: _ServiceParts | None = None,
    ) -> Verification:
        """A verification that the user's call to one of our missed-call numbers approves.

        Always a new one, never the pending one of an earlier request: whoever holds a missed-call
        verification's sid is approved by the phone's call, so it must not be handed to a second
        asker. Each waits on a number of the pool of its own (a call approves the verification
        waiting on the number it rang); when all of them are taken for this phone, MissedCallsBusy.
        """
        pool = list(self.call_channels.missed_call_numbers)
        secrets.SystemRandom().shuffle(pool)  # spread load over the pool
        for asked, call_to in enumerate(pool, 1):
            scope = missed_call_scope(call_to)
            started = self.store.start_or_resend(
                new_sid=self.secrets.new_sid(number.e164, scope),
                to=number.e164,
                channel=Channel.MISSED_CALL,
                locale=locale,
                digest="",  # no code: only a call from the number approves it
                sealed="",
                ttl_ms=self.call_channels.missed_call_ttl_seconds * 1000,
                retention_ms=self.code_policy.retention_seconds * 1000,
                send_limit=self.send_limits.per_number,
                scope=scope,
                resend=False,
                first_status="awaiting_call",
                fields={"ct": call_to, **(ours.fields if ours else {})},
                count_if_taken=asked == len(pool),  # every one taken: that still counts
                idempotency=idempotency,
                limit_scope=ours.sid if ours else "",
            )
            if started is not None:
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

    def _counted(
        self, number: phone.PhoneNumber, client_id: str, store: Callable[..., T], *args: Any
    ) -> T:
        """`store(*args)` with the send counted in the prefix and client windows first; the
        counts are taken back when it stores nothing (the number's own limit, counted by the
        store with the send, refused it: RateLimited; or it failed)."""
        counted = self._count_send(number, client_id)
        try:
            return store(*args)
        except SendLimited as exc:
            self.limiter.release(counted)
            wait = max(1, -(-exc.retry_after_ms // 1000))
            raise RateLimited(
                "number", wait, f"too many codes sent (per number); try again in {wait} s"
            ) from None
        except BaseException:
            self.limiter.release(counted)
            raise

    def _count_send(self, number: phone.PhoneNumber, client_id: str) -> Counted:
        """Count the send in the prefix and client windows (the number's own is counted by the
        store, with the send); RateLimited when one is full."""
        refusal, counted = self.limiter.acquire(
            [
                Window("prefix", number.prefix, self.send_limits.per_prefix),
                Window("client", client_id, self.send_limits.per_client),
            ]
        )
        if refusal is None:
            return counted
        raise RateLimited(
            refusal.scope,
            refusal.retry_after_seconds,
            f"too many codes sent (per {refusal.scope}); "
            f"try again in {refusal.retry_after_seconds} s",
        )

    def _deliver(
        self,
        sid: str,
        to: str,
        channel: Channel,
        locale: str,
        code: str,
        carrier: Carrier,
        ours: _ServiceParts,
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
                url=self.urls.call_answer(sid, locale, ours.sid, "fn" in ours.fields),
                status_callback=self.urls.call_status(sid),
            )
        body = self.prompts.text(
            locale, "otp.sms.body", app_name=ours.name(self.app_name), code=code
        )
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
        self,
        *,
        code: object,
        sid: object = None,
        to: object = None,
        country: object = None,
        idempotency: Idempotency | None = None,
        service: VerifyService | None = None,
    ) -> CheckOutcome:
        """Check a code against the verification `sid`, or the number's pending one (of
        `service`, None the default: another Service's verification is NotFound).

        Raises InvalidRequest, NotFound, NotPending, RateLimited (the number's failure budget),
        Repeated (`idempotency` names a request that came before) or IdempotencyConflict.
        """
        if not isinstance(code, str) or not code.isascii() or not code.isdigit():
            raise InvalidRequest("code", "invalid_code", "code must be a string of digits")
        if len(code) not in _CODE_LENGTHS:
            raise InvalidRequest("code", "invalid_code", "code must have 4 to 10 digits")
        if sid is None and to is None:
            raise InvalidRequest("to", "missing_field", "give 'to' or 'sid'")
        service_sid = _service_sid(service)
        lookup: dict[str, str] = {}
        number_key: tuple[str, str] | None = None
        if to is not None:  # with a sid too, the verification must be for this number
            e164 = _parse_number(to, country).e164
            lookup.update(to=e164)
            number_key = (self.secrets.bucket(e164), self.secrets.number_id(e164))
            # A flash-call code is shorter than any call or SMS code (4-5 digits against 6-10):
            # its length says which of the number's pending verifications it is for.
            flash = self.call_channels
            if flash.flash_call_numbers and len(code) == flash.flash_code_length:
                lookup["scope"] = FLASH_CALL_SCOPE + (f":{service_sid}" if service_sid else "")
            elif service_sid:
                lookup["scope"] = service_sid
        if sid is not None:
            if not is_sid(sid):
                raise InvalidRequest("sid", "invalid_sid", f"sid must be {SID_SHAPE}")
            lookup["sid"] = str(sid)
        if idempotency is not None:
            idempotency.bucket = bucket_of(str(sid)) if sid is not None else number_key[0]
            if (record := self.store.idempotent_record(idempotency)) is not None:
                raise Repeated(record)

        def checked(**where: str) -> CheckResult:
            return self.store.check(
                digest=self.secrets.digest(code),
                max_attempts=self.code_policy.max_attempts,
                failure_budget=self.code_policy.failure_budget,
                number=number_key,
                idempotency=idempotency,
                service=service_sid,
                **where,
            )

        result = checked(**lookup)
        # A Service's codes may be as short as a flash call's (CodeLength 4-10): with no flash
        # call pending, the code is for the Service's own call or SMS.
        flash_first = lookup.get("scope", service_sid) != service_sid
        if result.outcome == "not_found" and "sid" not in lookup and service_sid and flash_first:
            result = checked(**{**lookup, "scope": service_sid})
        return self._checked(result, by_sid=sid is not None)

    def exhausted(self, to: object, service: VerifyService | None = None) -> bool:
        """Whether the number's last wrong code ended a verification of `service` at its
        attempt limit, within that code's lifetime: a check by number then finds nothing
        pending, and Twilio's answer to it is "max check attempts" (60202), not "not found"."""
        number = _parse_number(to, None)
        sid = self.store.last_wrong_code(
            self.secrets.bucket(number.e164), self.secrets.number_id(number.e164)
        )
        verification = self.store.get(sid) if sid else None
        return (
            verification is not None
            and (verification.service_sid or "") == _service_sid(service)
            and verification.status is Status.MAX_ATTEMPTS_REACHED
            and time.time() * 1000 < verification.expires_at
        )

    def checked_before(self, outcome: str, sid: str, status: str) -> CheckOutcome:
        """The answer to a check whose request came before with this Idempotency-Key and acted
        (its outcome, as the script recorded it), given again without acting."""
        verification = self._require(sid)
        result = CheckResult(outcome, sid, Status(status), verification.to)
        return self._checked(result, by_sid=True, again=True)

    def _checked(self, result: CheckResult, *, by_sid: bool, again: bool = False) -> CheckOutcome:
        if not again:
            metrics().checks.labels(result.outcome).inc()
        logs.bind(verification_sid=result.sid, outcome=result.outcome)
        if result.outcome == "other_number":
            raise OtherNumber()
        if result.outcome == "not_found" or result.sid is None or result.status is None:
            raise NotFound("no verification with this sid" if by_sid else NOTHING_PENDING)
        if result.outcome == "not_checkable":
            raise NotCheckable(result.sid)
        ended_now = result.outcome in ("approved", "expired") or (
            result.outcome == "wrong" and result.status is Status.MAX_ATTEMPTS_REACHED
        )
        if ended_now and not again:
            self._nudge(result.sid)
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
        if not again:
            log.info("verification %s: check %s", result.sid, result.outcome)
        return CheckOutcome(result.sid, result.status, result.to or "")

    # -- reading and ending --------------------------------------------------------------------

    def get(self, sid: object, service: VerifyService | None = None) -> Verification:
        """The verification `sid` of `service` (None: the default one); NotFound for another
        Service's."""
        if not is_sid(sid):
            raise NotFound(NOT_A_SID)
        verification = self._require(str(sid))
        if (verification.service_sid or "") != _service_sid(service):
            raise NotFound()
        return verification

    def cancel(self, sid: object, service: VerifyService | None = None) -> Verification:
        """Cancel a pending verification of `service` (None: the default one); NotPending if
        it had already ended, NotFound if it is another Service's."""
        if not is_sid(sid):
            raise NotFound(NOT_A_SID)
        result = self.store.cancel(str(sid), service=_service_sid(service))
        if result is None:
            raise NotFound()
        ended_now, status = result
        verification = self._require(str(sid))
        if ended_now:
            self._nudge(str(sid))
            if status is Status.EXPIRED and self.stats is not None:  # found past its expiry
                self.stats.failed(verification.channel, _country(verification.to), "expired")
        if not ended_now or status is not Status.CANCELED:
            raise NotPending(str(sid), status)
        log.info("verification %s: canceled", sid)
        return verification

    def approve(self, sid: object, service: VerifyService | None = None) -> Verification:
        """Approve a pending verification of `service` without a code (Twilio's update with
        Status=approved: the app verified the user another way); NotPending if it had ended,
        NotFound if it is another Service's."""
        if not is_sid(sid):
            raise NotFound(NOT_A_SID)
        result = self.store.cancel(str(sid), service=_service_sid(service), approve=True)
        if result is None:
            raise NotFound()
        ended_now, status = result
        if ended_now:
            self._nudge(str(sid))
            self._count_outcome(str(sid), "approved" if status is Status.APPROVED else "expired")
        if not ended_now or status is not Status.APPROVED:
            raise NotPending(str(sid), status)
        log.info("verification %s: approved without a code", sid)
        return self._require(str(sid))

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
            number=(self.secrets.bucket(number.e164), self.secrets.number_id(number.e164)),
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
            self._nudge(sid)
            self._count_outcome(sid, outcome)
        elif outcome == "refused" and self.stats is not None:
            self.stats.failed(Channel.MISSED_CALL, number.country or "??", "caller_id_untrusted")
        return outcome

    # -- announcing ends -----------------------------------------------------------------------

    def reconcile_sends(self, limit: int = 100) -> int:
        """Fail the sends left "requested" by a worker that died between asking the carrier
        and recording its answer (or crashed before asking): past SEND_DEADLINE, no answer will
        come. A verification whose every send failed so ends as failed (and is announced), so
        none stays pending with nothing sent. How many were failed. Run by the housekeeping
        thread; a late carrier answer that beat it wins (only "requested" ones are touched)."""
        now = time.monotonic()
        if now - self._reconciled_at < _SWEEP_INTERVAL_SECONDS:
            return 0
        self._reconciled_at = now
        failed = 0
        for sid, index in self.store.stale_sends(list(keys.BUCKETS), self.send_deadline_ms, limit):
            settled = self.store.settle(
                sid,
                index,
                status="failed",
                error="no answer from the carrier was recorded (the worker stopped?)",
                only_if_requested=True,
            )
            failed += 1
            found = self.store.get(sid)
            attempts = found.send_attempts if found is not None else ()
            channel = attempts[index].channel if index < len(attempts) else "unknown"
            metrics().sends_finished.labels(channel, "reconciled").inc()
            log.warning("verification %s: send %d never settled; marked failed", sid, index)
            if settled.status is Status.FAILED:
                self._nudge(sid)
        return failed

    def _nudge(self, sid: str) -> None:
        """The store queued the event announcing this end in the sid's bucket: tell the
        dispatcher where to look. Never fails the caller: a lost hint only delays the event
        until the dispatcher's next visit of every bucket."""
        if self.events is None:
            return
        try:
            self.events.nudge(f"v{bucket_of(sid)}")
        except Exception:
            log.warning("verification %s: the events hint was not left", sid, exc_info=True)

    def expire_due(self, limit: int = 100) -> int:
        """End verifications past their expiry that nobody checked (their end queues
        verification.expired); how many this call ended. Every bucket at once (one round trip
        per master), at most every few seconds. Run by the events thread."""
        now = time.monotonic()
        if self.events is None or now - self._swept_at < _SWEEP_INTERVAL_SECONDS:
            return 0
        self._swept_at = now
        ended = 0
        for sid in self.store.due_expiries(list(keys.BUCKETS), limit):
            result = self.store.cancel(sid, only_if_expired=True)
            if result is not None and result[0]:
                ended += 1
                self._nudge(sid)
                self._count_outcome(sid, "expired")
        return ended

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


def _service_sid(service: VerifyService | None) -> str:
    """How a verification names its Service: "" for the default one."""
    return "" if service is None or service.is_default else service.sid


@dataclass(frozen=True)
class _ServiceParts:
    """What a Verify Service (other than the default) adds to a start: its sid (the scope of
    its pending verifications and of its per-number limit), the fields kept with the
    verification, its code length, the name said, a custom code."""

    sid: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    code_length: int | None = None
    friendly_name: str | None = None
    custom_code: str | None = None

    @classmethod
    def of(
        cls,
        service: VerifyService | None,
        custom_friendly_name: str | None,
        custom_code: str | None,
    ) -> _ServiceParts:
        fields = {"fn": custom_friendly_name} if custom_friendly_name else {}
        if service is None:
            return cls(fields=fields, friendly_name=custom_friendly_name, custom_code=custom_code)
        return cls(
            sid=service.sid,
            fields={"sv": service.sid, **fields},
            code_length=service.code_length,
            friendly_name=custom_friendly_name or service.friendly_name,
            custom_code=custom_code,
        )

    def name(self, default: str) -> str:
        return self.friendly_name or default


def _require_custom_code(code: str, service: VerifyService | None, channel: Channel) -> None:
    """A custom code is the app's own (Twilio's CustomCode): only where the Service allows it,
    4 to 10 digits, and never for channels whose code is the call itself."""
    if service is None or not service.custom_code_enabled:
        raise InvalidRequest(
            "custom_code", "custom_code_not_allowed", "this Service does not allow custom codes"
        )
    if channel not in (Channel.CALL, Channel.SMS):
        raise InvalidRequest(
            "custom_code", "custom_code_not_allowed", f"a {channel} verification has no code"
        )
    if not (code.isascii() and code.isdigit() and len(code) in _CODE_LENGTHS):
        raise InvalidRequest("custom_code", "invalid_code", "a custom code is 4 to 10 digits")
