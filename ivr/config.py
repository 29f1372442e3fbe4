"""Every setting, read from the environment and validated once at start.

Why pydantic-settings: it reads the environment, coerces types and reports *every* bad value at
once with the variable's name, which is what an operator wants from a failed start.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
# The starting set of prompts and flows, shipped inside the package (in a checkout, links to
# the repository's voice_prompts/ and flows/), so an installed wheel serves from any folder.
DEFAULT_PROMPTS_DIR = (PACKAGE_DIR / "starter" / "voice_prompts").resolve()
DEFAULT_FLOWS_DIR = (PACKAGE_DIR / "starter" / "flows").resolve()


def instance_folder() -> Path:
    """Where development secrets, API tokens' key and the embedded Redis live: INSTANCE_PATH,
    else ./instance of the working directory, for the server and every `ivr` command alike
    (Flask's default, for an installed package, is inside the virtualenv)."""
    return Path(os.environ.get("INSTANCE_PATH") or "instance").resolve()


# Countries voice and SMS may reach unless ALLOWED_COUNTRIES says otherwise: North America,
# Western Europe, Australia and New Zealand — markets with low toll-fraud exposure. Deployments
# elsewhere list their own; "*" allows every country (check-config warns).
DEFAULT_ALLOWED_COUNTRIES = "US,CA,GB,IE,FR,DE,ES,PT,IT,NL,BE,LU,AT,CH,SE,NO,DK,FI,AU,NZ"

MAX_FLASH_CALL_GUESS_ODDS = 0.01  # the share of flash-call verifications a guesser may pass
_MIN_SECRET_LENGTH = 32  # a generated secret is 43 characters; anything shorter was tampered with
_RATE_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """The configuration cannot serve: one line per problem, each naming its variable."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rate:
    """A limit such as "5/10m": at most `limit` events per sliding window of `window_seconds`."""

    limit: int
    window_seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE_PATTERN.match(text)
        if not match:
            raise ValueError(f"expected a rate like '5/10m' or '100/1h', got {text!r}")
        count, amount, unit = match.groups()
        window = int(amount or 1) * _UNIT_SECONDS[unit]
        if int(count) < 1 or window < 1:
            raise ValueError(f"a rate needs a positive count and window, got {text!r}")
        return cls(int(count), window)

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}s"


def _is_webhook_secret(value: str) -> bool:
    """A Standard Webhooks secret: whsec_ + base64 of at least 24 random bytes."""
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def _validate_e164(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{name} must be an E.164 number like +14155550100 ({exc})") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError(f"{name} is not a possible phone number: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class Settings(BaseSettings):
    """The environment, typed. Field names are the variables' names in lower case."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="forbid", validate_default=True, env_ignore_empty=True
    )

    twilio_account_sid: str | None = Field(None, pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token: SecretStr | None = None
    twilio_caller_id: str | None = None
    twilio_api_base_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    twilio_http_timeout: float = Field(5.0, gt=0, le=60)
    public_base_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    # Reverse proxies in front that append the client's address to X-Forwarded-For (nginx: 1).
    # Only their entries are believed, for the client address the console's sign-in limit and
    # the access log see; 0 believes none (a client could forge the header).
    trusted_proxy_hops: int = Field(0, ge=0, le=5)

    redis_url: str | None = Field(
        None, pattern=r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://\S*$"
    )
    # Writes that must not be lost in a failover (an approval, a counted wrong code or send, a
    # reading of the code) wait for this many replicas to acknowledge them (WAIT); unset: one
    # when the master has any, none when it has none (a single server, the embedded one).
    redis_wait_replicas: int | None = Field(None, ge=0, le=5)
    redis_wait_timeout_ms: int = Field(500, ge=10, le=1500)
    secret_key: SecretStr | None = Field(None, min_length=32)
    ivr_api_token: SecretStr | None = Field(None, min_length=16)

    otp_length: int = Field(6, ge=6, le=10)
    otp_ttl_seconds: int = Field(600, ge=1, le=3600)
    otp_max_attempts: int = Field(5, ge=1, le=20)
    allowed_countries: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(DEFAULT_ALLOWED_COUNTRIES.split(","))
    )
    send_limit_per_number: Annotated[Rate, NoDecode] = Field(Rate(5, 600))
    send_limit_per_prefix: Annotated[Rate, NoDecode] = Field(Rate(30, 600))
    send_limit_per_token: Annotated[Rate, NoDecode] = Field(Rate(500, 3600))
    check_failure_limit_per_number: Annotated[Rate, NoDecode] = Field(Rate(10, 3600))
    # How long a verification stays readable after its code's lifetime ended.
    verification_retention_seconds: int = Field(86400, ge=60, le=30 * 86400)

    app_name: str = Field("IVR", min_length=1, max_length=40)
    default_locale: str = "en-US"
    voice_prompts_dir: Path = DEFAULT_PROMPTS_DIR
    sms_origin_domain: str | None = Field(None, pattern=r"^[a-z0-9.-]+\.[a-z]{2,}$")
    flows_dir: Path = DEFAULT_FLOWS_DIR
    # A call's place in its flow is kept this long after its last step (longer than any call).
    call_state_ttl_seconds: int = Field(4 * 3600, ge=300, le=86400)
    # The audio of every recording uploaded in the console, together (Redis holds it as base64,
    # a third more); an upload past it is refused. Unused ones are swept (ivr.recordings).
    recordings_max_mb: int = Field(200, ge=5, le=10_000)
    customer_lookup_url: str | None = Field(None, pattern=r"^https?://")
    customer_lookup_secret: SecretStr | None = None
    customer_lookup_timeout_seconds: float = Field(2.0, gt=0, le=10)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per log line (the app's and gunicorn's), for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    # The bearer token /metrics asks for; unset, /metrics answers only on loopback, unproxied.
    metrics_token: SecretStr | None = Field(None, min_length=16)

    # Missed-call verification: the number(s) users ring (we reject the call), and how long a
    # verification waits for that call.
    missed_call_number: str | None = None
    missed_call_numbers: Annotated[tuple[str, ...], NoDecode] = ()
    missed_call_ttl_seconds: int = Field(300, ge=30, le=3600)
    # The least STIR/SHAKEN attestation a missed call must carry to approve ("" = any, or none).
    missed_call_min_attestation: Literal["", "A", "B", "C"] = ""
    # Flash calls: the pool our calls come from; the code is the caller ID's last digits.
    flash_call_numbers: Annotated[tuple[str, ...], NoDecode] = ()
    # 4-5: shorter than any call or SMS code (OTP_LENGTH >= 6), so a check by number can tell
    # which pending verification a code is for.
    flash_call_code_length: int = Field(4, ge=4, le=5)
    flash_call_ring_seconds: int = Field(15, ge=5, le=20)
    flash_call_max_attempts: int = Field(3, ge=1, le=10)
    flash_call_ttl_seconds: int = Field(300, ge=30, le=3600)
    # A guesser passes FLASH_CALL_MAX_ATTEMPTS / len(pool) of flash-call verifications: over
    # 1 % the app refuses to start, unless the operator accepts that here (e.g. flash calls
    # used only beside another factor, or a demo).
    flash_call_accept_weak_odds: bool = False
    # Events (verification.approved, …) POSTed to the app, signed per Standard Webhooks.
    events_webhook_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    events_webhook_secret: SecretStr | None = None
    events_webhook_timeout_seconds: float = Field(5.0, gt=0, le=30)
    events_max_attempts: int = Field(10, ge=1, le=30)

    port: int = Field(5000, ge=1, le=65535)
    web_concurrency: int = Field(2, ge=1, le=64)

    @field_validator("twilio_caller_id")
    @classmethod
    def _caller_id_is_e164(cls, value: str | None) -> str | None:
        return _validate_e164(value, "TWILIO_CALLER_ID")

    @field_validator("missed_call_number")
    @classmethod
    def _missed_call_number_is_e164(cls, value: str | None) -> str | None:
        return _validate_e164(value, "MISSED_CALL_NUMBER")

    @field_validator("missed_call_numbers", "flash_call_numbers", mode="before")
    @classmethod
    def _parse_number_list(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        parts = value.split(",") if isinstance(value, str) else list(value or ())
        name = (info.field_name or "").upper()
        numbers = [_validate_e164(str(part).strip(), name) for part in parts if str(part).strip()]
        return tuple(dict.fromkeys(n for n in numbers if n))  # in order, without repeats

    @field_validator("redis_url")
    @classmethod
    def _cluster_seeds_parse(cls, value: str | None) -> str | None:
        from ivr.store import CLUSTER_SCHEMES, cluster_seeds  # the store owns the URL's shape

        if value and value.partition("://")[0].lower() in CLUSTER_SCHEMES:
            cluster_seeds(value)  # its ValueError names the seed that is not host:port
        return value

    @field_validator("public_base_url", "twilio_api_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("allowed_countries", mode="before")
    @classmethod
    def _parse_countries(cls, value: Any) -> frozenset[str]:
        if isinstance(value, str):
            value = [part.strip().upper() for part in value.split(",") if part.strip()]
        codes = frozenset(value)
        if codes == {"*"}:
            return codes
        unknown = sorted(c for c in codes if c not in phonenumbers.SUPPORTED_REGIONS)
        if unknown or not codes:
            raise ValueError(
                f"expected ISO 3166 country codes separated by commas (or '*'), "
                f"unknown: {', '.join(unknown) or '(empty)'}"
            )
        return codes

    @field_validator(
        "send_limit_per_number",
        "send_limit_per_prefix",
        "send_limit_per_token",
        "check_failure_limit_per_number",
        mode="before",
    )
    @classmethod
    def _parse_rate(cls, value: Any) -> Rate:
        return value if isinstance(value, Rate) else Rate.parse(str(value))

    @field_validator("default_locale")
    @classmethod
    def _locale_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Z]{2})?", value):
            raise ValueError(f"expected a locale like en-US, got {value!r}")
        return value

    @field_validator("voice_prompts_dir", "flows_dir")
    @classmethod
    def _folder_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"no such folder: {value}")
        return value

    @model_validator(mode="after")
    def _twilio_is_all_or_nothing(self) -> Settings:
        has_sid, has_token = bool(self.twilio_account_sid), bool(self.twilio_auth_token)
        if has_sid != has_token:
            missing = "TWILIO_AUTH_TOKEN" if has_sid else "TWILIO_ACCOUNT_SID"
            raise ValueError(
                f"{missing}: required with the other: set both TWILIO_ACCOUNT_SID and "
                "TWILIO_AUTH_TOKEN for Twilio, or neither for the simulated carrier"
            )
        if has_sid and not self.twilio_caller_id:
            raise ValueError("TWILIO_CALLER_ID: required when a Twilio account is configured")
        if has_sid and not self.public_base_url:
            raise ValueError(
                "PUBLIC_BASE_URL: required when a Twilio account is configured: Twilio must "
                "reach our webhooks, and signatures are checked against that URL"
            )
        self._check_flash_call_pool()
        if self.events_webhook_url and not self.events_webhook_secret:
            raise ValueError(
                "EVENTS_WEBHOOK_SECRET: required with EVENTS_WEBHOOK_URL: every event is signed "
                "with it (Standard Webhooks); make one with `ivr events secret`"
            )
        if self.events_webhook_secret and not _is_webhook_secret(
            self.events_webhook_secret.get_secret_value()
        ):
            raise ValueError(
                "EVENTS_WEBHOOK_SECRET: expected whsec_ followed by at least 24 bytes in base64; "
                "make one with `ivr events secret`"
            )
        if self.customer_lookup_url and not self.customer_lookup_secret:
            raise ValueError(
                "CUSTOMER_LOOKUP_SECRET: required with CUSTOMER_LOOKUP_URL: every lookup is "
                "signed with it (HMAC-SHA256), so the CRM can tell our requests from others"
            )
        return self

    def _check_flash_call_pool(self) -> None:
        pool, length = self.flash_call_numbers, self.flash_call_code_length
        if not pool:
            return
        if len(pool) < 2:
            raise ValueError(
                "FLASH_CALL_NUMBERS: at least 2 numbers: with one, every flash call carries the "
                "same code"
            )
        suffixes: dict[str, str] = {}
        for number in pool:
            earlier = suffixes.setdefault(number[-length:], number)
            if earlier != number:
                raise ValueError(
                    f"FLASH_CALL_NUMBERS: {earlier} and {number} end in the same "
                    f"{length} digits (FLASH_CALL_CODE_LENGTH): their codes would be the same"
                )
        odds = self.flash_call_guess_odds
        if odds > MAX_FLASH_CALL_GUESS_ODDS and not self.flash_call_accept_weak_odds:
            needed = math.ceil(self.flash_call_max_attempts / MAX_FLASH_CALL_GUESS_ODDS)
            raise ValueError(
                f"FLASH_CALL_NUMBERS: with {len(pool)} numbers and {self.flash_call_max_attempts} "
                f"attempts (FLASH_CALL_MAX_ATTEMPTS), someone who never got the call guesses the "
                f"code in {odds:.0%} of flash-call verifications; at most "
                f"{MAX_FLASH_CALL_GUESS_ODDS:.0%} is allowed: use {needed} or more numbers or "
                "fewer attempts, or set FLASH_CALL_ACCEPT_WEAK_ODDS=true to accept the risk "
                "(then use flash calls only beside another factor)"
            )

    @property
    def flash_call_guess_odds(self) -> float:
        """The share of flash-call verifications a guesser passes without the phone: the code
        is one of the pool's endings, and anyone can learn the pool."""
        pool = self.flash_call_numbers
        return min(1.0, self.flash_call_max_attempts / len(pool)) if pool else 0.0

    @property
    def missed_call_pool(self) -> tuple[str, ...]:
        """Every number users may ring for a missed-call verification."""
        single = (self.missed_call_number,) if self.missed_call_number else ()
        return tuple(dict.fromkeys(single + self.missed_call_numbers))

    @property
    def uses_twilio(self) -> bool:
        """True when a real Twilio account carries calls; otherwise the simulated carrier does."""
        return bool(self.twilio_account_sid and self.twilio_auth_token)


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from the environment plus `overrides` (keys as variable names).

    Raises ConfigError listing every bad value, each with its variable name.
    """
    kwargs = {key.lower(): value for key, value in (overrides or {}).items()}
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Any) -> str:
    """One line per problem: VARIABLE: what is wrong (the value, when it helps)."""
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"{location.upper()}: not a known setting"
    if not location:
        return message
    value = error.get("input")
    if value is None or "token" in location or "key" in location:
        return f"{location.upper()}: {message}"
    if location.endswith("_url"):
        value = redact_url(str(value))
    if repr(value) in message:  # the validator already shows the value
        return f"{location.upper()}: {message}"
    return f"{location.upper()}: {message} (got {value!r})"


_URL_PASSWORD = re.compile(r"^([^:/?#]+://[^/?#@]*?:)[^/?#]*@")


def redact_url(url: str) -> str:
    """A URL fit to print: any password replaced by ***. Text, not urlsplit: it must work on
    the malformed URLs it is asked to describe (a bad port, a cluster's host list)."""
    return _URL_PASSWORD.sub(r"\1***@", url, count=1)


@dataclass(frozen=True)
class Secrets:
    """The secrets the app runs with, after development defaults were filled in."""

    secret_key: bytes
    webhook_auth_token: str
    api_token: str


def resolve_secrets(settings: Settings, instance_path: Path) -> Secrets:
    """Fill in development secrets kept in the instance folder, created once (mode 0600).

    Why: a fresh clone must run with no setup, yet restarts must keep the same keys, or every
    pending code and issued dev token would stop working.
    """
    from_instance: list[str] = []

    def kept(name: str, value: SecretStr | None) -> str:
        if value is not None:
            return value.get_secret_value()
        from_instance.append(name)
        return _instance_secret(instance_path / name)

    secret_key = kept("secret_key", settings.secret_key)
    api_token = kept("api_token", settings.ivr_api_token)
    # With a real account the auth token signs webhooks; the simulated carrier signs with a
    # development token of its own, so signature checks never switch off.
    webhook_token = kept("webhook_auth_token", settings.twilio_auth_token)
    weak = [
        f"{instance_path / name}: shorter than {_MIN_SECRET_LENGTH} characters (delete the "
        "file to have a new one made)"
        for name, value in (
            ("secret_key", secret_key),
            ("api_token", api_token),
            ("webhook_auth_token", webhook_token),
        )
        if name in from_instance and len(value) < _MIN_SECRET_LENGTH
    ]
    if weak:
        raise ConfigError(weak)
    return Secrets(secret_key.encode(), webhook_token, api_token)


def _instance_secret(path: Path) -> str:
    """Read the secret at `path`, creating it first if absent; safe when workers race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(draft, path)  # atomic: the first writer wins, nobody reads a half file
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text(encoding="ascii").strip()
