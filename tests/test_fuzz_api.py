"""The API fuzzed against its own OpenAPI document (schemathesis, in-process over WSGI).

Every operation, every check schemathesis has: no 5xx, no status, content type, header or body
the document does not describe, no request the schema allows refused and none it forbids
accepted. Bounded examples and a fixed seed keep a run short and the same from run to run.
A body goes in each media type the document gives it (JSON, and both forms as their `*Form`
schemas say), and an operation's test fails unless each of them was sent and read.

Each operation gets an app of its own, built by the real factory, whose Redis state carries over
from one request to the next as a server's does. The simulator's operations run against an app
without a Twilio account (they answer 404 with one); the rest against one with an account that
talks to the local stand-in. Both offer every channel, so no schema-valid channel is refused for
want of configuration (that refusal is its own test in tests/test_openapi.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import phonenumbers
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from ivr.config import DEFAULT_ALLOWED_COUNTRIES, DEFAULT_PROMPTS_DIR
from ivr.web.public import openapi_document
from tests.conftest import API_TOKEN

SEED = 20240611
MAX_EXAMPLES = 25
MISSED_CALL_NUMBERS = "+14155550111,+14155550112"
# 300 numbers: 3 attempts in 300 keeps a guesser's odds at the 1 % the app accepts.
FLASH_CALL_NUMBERS = ",".join(f"+1415556{line:04d}" for line in range(300))


def mobile_numbers() -> list[str]:
    """Numbers every channel may reach: mobiles (SMS goes to no landline) in allowed countries."""
    # US numbers are "fixed line or mobile": SMS may try them. One a range, so the per-prefix
    # send limit is met late.
    numbers = [f"+1{area}5550{line}" for area in (212, 305, 415, 617, 702) for line in (123, 188)]
    for region in sorted(DEFAULT_ALLOWED_COUNTRIES.split(",")):
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if example is not None:
            numbers.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return numbers


def catalog_locales() -> list[str]:
    """Tags the shipped prompt catalogs speak, as asked in various ways (es-ES, es, es_es…)."""
    tags = sorted(path.stem for path in DEFAULT_PROMPTS_DIR.glob("*.yaml"))
    languages = sorted({tag.split("-")[0] for tag in tags})
    return tags + languages + [f"{language}_{language.upper()}".lower() for language in languages]


def display_names() -> st.SearchStrategy[str]:
    """What a customer's name may be: visible text, no control or format characters."""
    printable = st.characters(exclude_categories=("Cc", "Cf", "Cs"))
    return st.text(printable, min_size=1, max_size=100).filter(lambda name: name.split() != [])


# The `format`s the document names for rules JSON Schema cannot state (its info says which).
schemathesis.openapi.format("phone", st.sampled_from(mobile_numbers()))
schemathesis.openapi.format(
    "country", st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)).map(str)
)
schemathesis.openapi.format("locale", st.sampled_from(catalog_locales()))
schemathesis.openapi.format("display-name", display_names())


class CurrentApp:
    """The WSGI app schemathesis sends to: the one the running test built. It notes the method
    and media type of each body the app read (answered neither 401, 405 nor 415)."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.bodies_read: set[tuple[str, str]] = set()

    def use(self, app: Flask | None) -> None:
        self.app = app
        self.bodies_read = set()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        assert self.app is not None, "no app: the api_under_test fixture did not run"
        media_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()

        def noting_start_response(status: str, *args: Any) -> Any:
            if media_type and status[:3] not in ("401", "405", "415"):
                self.bodies_read.add((environ["REQUEST_METHOD"], media_type))
            return start_response(status, *args)

        return self.app(environ, noting_start_response)


current_app = CurrentApp()


def fuzz_config(*, stateful: bool = False) -> SchemathesisConfig:
    """Every check, valid and invalid data both; the operation by operation phases, or the
    stateful one (operations chained by the document's links)."""
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            # The token as the document's `bearer` scheme, not a fixed header: schemathesis's
            # probes then know how to send a request without it, or with a wrong one.
            "auth": {"openapi": {"bearer": {"bearer": API_TOKEN}}},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            # Valid data may still meet a state that refuses it: 409 (not pending), 429 (a
            # limit), and 422 (an Idempotency-Key the fuzzer already used with other fields).
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 422, 429, "5xx"]
                },
            },
            "phases": {"stateful": {"enabled": stateful}},
            # Strings mined from the app's source would fill `format`ted fields (a locale, a
            # phone) with values the format forbids but schemathesis calls valid.
            "analysis": {"constants": {"enabled": False}},
        }
    )


# The document the app serves at /v1/openapi.json (the test below checks that it is this one).
schema = schemathesis.openapi.from_dict(openapi_document(), config=fuzz_config())
schema.app = current_app
workflow_schema = schemathesis.openapi.from_dict(
    openapi_document(), config=fuzz_config(stateful=True)
)
workflow_schema.app = current_app


@schema.hook("map_case")
def body_id_is_the_urls(context: Any, case: Any) -> Any:
    """A customer PUT's body `id` must equal the URL's (the document says so in words)."""
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    if (
        positive
        and context.operation.label == "PUT /v1/customers/{customer_id}"
        and isinstance(case.body, dict)
        and "id" in case.body
    ):
        case.body["id"] = case.path_parameters["customer_id"]
    return case


@pytest.fixture
def api_under_test(
    make_app: Callable[..., Flask], request: pytest.FixtureRequest
) -> Iterator[Flask]:
    simulated = "/v1/simulator/" in request.node.name
    accounts: dict[str, Any] = (
        {
            "twilio_account_sid": None,
            "twilio_auth_token": None,
            "twilio_caller_id": None,
            "twilio_api_base_url": None,
        }
        if simulated
        else {}
    )
    app = make_app(
        missed_call_numbers=MISSED_CALL_NUMBERS, flash_call_numbers=FLASH_CALL_NUMBERS, **accounts
    )
    current_app.use(app)
    yield app
    read = current_app.bodies_read
    current_app.use(None)
    # Schemathesis draws each case's media type among the documented ones: make sure that every
    # one of them, the forms as well as JSON, was sent and read by this operation's fuzzing.
    method, media_types = documented_bodies(request.node.name)
    unread = {media_type for media_type in media_types if (method, media_type) not in read}
    assert not unread, f"no {method} body sent as {', '.join(sorted(unread))} was read"


def documented_bodies(test_name: str) -> tuple[str, set[str]]:
    """The method of the operation a test id names, and the media types of its request body."""
    label = re.search(r"\[([A-Z]+) (/[^\]]*)\]", test_name)
    assert label is not None, test_name
    operation = schema.raw_schema["paths"][label[2]][label[1].lower()]
    return label[1], set(operation.get("requestBody", {}).get("content", {}))


def test_the_fuzzed_document_is_the_one_the_app_serves(client) -> None:
    assert client.get("/v1/openapi.json").get_json() == schema.raw_schema


@schema.parametrize()
# The app is the fixture's for all of an operation's examples, as a server is for its clients.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_api_keeps_to_its_openapi_document(case: Any, api_under_test: Flask) -> None:
    case.call_and_validate()


def test_the_api_keeps_to_its_document_through_linked_calls(make_app: Callable[..., Flask]) -> None:
    """Stateful: a started verification is read, checked, cancelled; a customer put is read and
    deleted; a simulated call is answered, each by the document's links."""
    app = make_app(
        missed_call_numbers=MISSED_CALL_NUMBERS,
        flash_call_numbers=FLASH_CALL_NUMBERS,
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )
    current_app.use(app)
    try:
        workflow = workflow_schema.as_state_machine()
        workflow.run(
            settings=settings(
                max_examples=10, stateful_step_count=6, deadline=None, derandomize=True
            )
        )
    finally:
        current_app.use(None)
