"""The carrier that places calls and sends SMS: Twilio's REST API, or a simulated carrier.

The simulated carrier serves when no Twilio account is configured, so the whole path can be
tried offline: what it "sends" is kept in Redis (SMS bodies sealed, since they hold codes) and
shown by the simulator's API, the handset's side of the story.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.util.retry import Retry

from ivr import keys
from ivr.metrics import metrics
from ivr.phone import masked
from ivr.verification.codes import CodeSecrets, SealError

log = logging.getLogger(__name__)

# Twilio error codes that mean "this number cannot be reached this way", not "we are broken".
# https://www.twilio.com/docs/api/errors
_NUMBER_ERROR_CODES = {
    21211,
    21214,
    21217,
    21401,
    21407,
    21408,
    21421,
    21601,
    21610,
    21612,
    21614,
    13223,
    13224,
    13225,
    13227,
}
_OUTBOX_SIZE = 200
_OUTBOX_TTL_SECONDS = 86400  # a day of quiet and the simulated handsets forget


class CarrierError(Exception):
    """The carrier did not take the call or message.

    kind: "unreachable" (no answer in time: try later), "upstream_error" (HTTP 5xx or 429 after
    retries), "rejected" (a 4xx: our request or account is at fault) or "invalid_number" (the
    carrier says the number cannot be reached).
    """

    def __init__(self, kind: str, detail: str, provider_code: int | None = None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.provider_code = provider_code


@dataclass(frozen=True)
class Receipt:
    """What the carrier answered: its id for the call or message, and the first status."""

    provider_sid: str
    status: str


class Carrier(Protocol):
    name: str

    def place_call(
        self, *, to: str, from_: str, url: str, status_callback: str, ring_seconds: int = 30
    ) -> Receipt:
        """Ask for an outbound call whose TwiML is fetched from `url` when answered."""
        ...

    def send_sms(self, *, to: str, from_: str, body: str, status_callback: str) -> Receipt:
        """Send one SMS."""
        ...


class TwilioCarrier:
    """Twilio's REST API through twilio-python, with bounded retries on 5xx and timeouts."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
    ):
        # Creating a call or message is not idempotent: retry only where Twilio cannot have
        # acted: the connection was never made, or it answered 429/503 (refused before doing
        # anything). After a read timeout or a 500/502/504 the call may exist: no retry, the
        # client is told, and may try again (the send limits count that).
        retry = Retry(
            total=retries,
            connect=retries,
            read=0,
            other=0,
            status=retries,
            backoff_factor=0.2,
            status_forcelist=(429, 503),
            allowed_methods=None,  # status retries apply to POST too (see above)
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        http_client = TwilioHttpClient(timeout=timeout, max_retries=retry)
        # twilio-python mounts the retrying adapter on https only; a Twilio-compatible base URL
        # (or the tests' stand-in) may be plain http.
        http_client.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.client = Client(account_sid, auth_token, http_client=http_client)
        if base_url:
            self.client.api.base_url = base_url

    def place_call(
        self, *, to: str, from_: str, url: str, status_callback: str, ring_seconds: int = 30
    ) -> Receipt:
        call = self._create(
            "call",
            self.client.calls.create,
            to=to,
            from_=from_,
            url=url,
            method="POST",
            timeout=ring_seconds,
            status_callback=status_callback,
            status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
        )
        return Receipt(call.sid, call.status or "queued")

    def send_sms(self, *, to: str, from_: str, body: str, status_callback: str) -> Receipt:
        message = self._create(
            "sms",
            self.client.messages.create,
            to=to,
            from_=from_,
            body=body,
            status_callback=status_callback,
        )
        return Receipt(message.sid, message.status or "queued")

    @staticmethod
    def _create(operation: str, create: Any, **params: Any) -> Any:
        """`create(**params)`, counted and timed as `operation` (call, sms) by how it ended:
        ok, Twilio's HTTP status, timeout, connection_error, or error (anything else)."""
        started, status = time.perf_counter(), "error"
        try:
            created = create(**params)
            status = "ok"
            return created
        except TwilioRestException as exc:
            status = str(exc.status)
            raise _carrier_error(exc) from None
        except requests.RequestException as exc:
            status = "timeout" if isinstance(exc, requests.Timeout) else "connection_error"
            raise CarrierError(
                "unreachable", f"Twilio did not answer in time ({type(exc).__name__})"
            ) from None
        finally:
            counted = metrics()
            counted.twilio_requests.labels(operation, status).inc()
            counted.twilio_duration.labels(operation).observe(time.perf_counter() - started)


def _carrier_error(exc: TwilioRestException) -> CarrierError:
    status, code = exc.status, exc.code
    if status >= 500 or status == 429:
        return CarrierError("upstream_error", f"Twilio answered HTTP {status}", code)
    if code in _NUMBER_ERROR_CODES:
        return CarrierError("invalid_number", f"Twilio refused the number: {exc.msg}", code)
    return CarrierError("rejected", f"Twilio refused the request (HTTP {status}): {exc.msg}", code)


class SimulatedCarrier:
    """Keeps what it would send in Redis; nothing leaves the machine."""

    name = "simulated"

    def __init__(self, client: redis.Redis, code_secrets: CodeSecrets):
        self.redis = client
        self.secrets = code_secrets

    def place_call(
        self, *, to: str, from_: str, url: str, status_callback: str, ring_seconds: int = 30
    ) -> Receipt:
        sid = "CA" + secrets.token_hex(16)
        self._record(
            {
                "sid": sid,
                "kind": "call",
                "to": to,
                "from": from_,
                "url": url,
                "status_callback": status_callback,
                "ring_seconds": ring_seconds,
            }
        )
        log.info("simulated call %s to %s", sid, masked(to))
        return Receipt(sid, "queued")

    def send_sms(self, *, to: str, from_: str, body: str, status_callback: str) -> Receipt:
        sid = "SM" + secrets.token_hex(16)
        self._record(
            {
                "sid": sid,
                "kind": "sms",
                "to": to,
                "from": from_,
                "body_sealed": self.secrets.seal(sid, body),
                "status_callback": status_callback,
            }
        )
        log.info("simulated SMS %s to %s (%d characters)", sid, masked(to), len(body))
        return Receipt(sid, "delivered")

    def outbox(self, limit: int = 50) -> list[dict[str, Any]]:
        """What was sent, newest first, SMS bodies opened: the simulated handsets' view."""
        raw_entries = self.redis.lrange(keys.simulator_outbox(), 0, limit - 1)
        return [self._opened(json.loads(raw)) for raw in raw_entries]

    def find(self, sid: str) -> dict[str, Any] | None:
        """One entry by its sid (only that one is opened)."""
        for raw in self.redis.lrange(keys.simulator_outbox(), 0, _OUTBOX_SIZE - 1):
            entry = json.loads(raw)
            if entry["sid"] == sid:
                return self._opened(entry)
        return None

    def _opened(self, entry: dict[str, Any]) -> dict[str, Any]:
        sealed = entry.pop("body_sealed", None)
        if sealed is not None:
            try:
                entry["body"] = self.secrets.unseal(entry["sid"], sealed)
            except SealError:
                entry["body"] = None  # sealed under an earlier SECRET_KEY
        return entry

    def _record(self, entry: dict[str, Any]) -> None:
        entry["created_at"] = int(time.time() * 1000)
        pipe = self.redis.pipeline()
        pipe.lpush(keys.simulator_outbox(), json.dumps(entry))
        pipe.ltrim(keys.simulator_outbox(), 0, _OUTBOX_SIZE - 1)
        pipe.expire(keys.simulator_outbox(), _OUTBOX_TTL_SECONDS)
        pipe.execute()
