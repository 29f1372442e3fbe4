"""The Verify v2 schema itself: Twilio-shaped bodies pass, and drifted ones fail.

No app and no Redis: the bodies are written here in the shape Twilio's reference gives.
"""

from __future__ import annotations

import copy
import re

import pytest
from jsonschema import Draft202012Validator

from tests.verify_v2_schema import KINDS, SCHEMA, assert_matches

HEX = "0123456789abcdef" * 2
SERVICE_SID = "VA" + HEX
ACCOUNT_SID = "AC" + HEX
VERIFICATION_SID = "VE" + HEX
ATTEMPT_SID = "VL" + HEX
BASE = "http://127.0.0.1:5000"
SERVICE_URL = f"{BASE}/v2/Services/{SERVICE_SID}"
WHEN = "2015-07-30T20:00:00Z"


def service() -> dict:
    """A Service with nothing optional configured: the nested objects are objects of nulls."""
    return {
        "sid": SERVICE_SID,
        "account_sid": ACCOUNT_SID,
        "friendly_name": "My App",
        "code_length": 6,
        "lookup_enabled": False,
        "psd2_enabled": False,
        "skip_sms_to_landlines": False,
        "dtmf_input_required": True,
        "tts_name": None,
        "do_not_share_warning_enabled": False,
        "custom_code_enabled": False,
        "push": {"include_date": False, "apn_credential_sid": None, "fcm_credential_sid": None},
        "totp": {"issuer": None, "time_step": None, "code_length": None, "skew": None},
        "default_template_sid": None,
        "whatsapp": {"msg_service_sid": None, "from": None},
        "passkeys": {
            "relying_party": {"id": None, "name": None, "origins": None},
            "authenticator_attachment": None,
            "discoverable_credentials": None,
            "user_verification": None,
        },
        "verify_event_subscription_enabled": False,
        "date_created": WHEN,
        "date_updated": WHEN,
        "url": SERVICE_URL,
        "links": {
            "verification_checks": f"{SERVICE_URL}/VerificationCheck",
            "verifications": f"{SERVICE_URL}/Verifications",
            "rate_limits": f"{SERVICE_URL}/RateLimits",
            "messaging_configurations": f"{SERVICE_URL}/MessagingConfigurations",
            "entities": f"{SERVICE_URL}/Entities",
            "webhooks": f"{SERVICE_URL}/Webhooks",
            "access_tokens": f"{SERVICE_URL}/AccessTokens",
        },
    }


def configured_service() -> dict:
    """A Service with every optional block set, as in Twilio's create example."""
    body = service()
    body.update(
        tts_name="name",
        custom_code_enabled=True,
        default_template_sid="HJ" + HEX,
        push={"include_date": False, "apn_credential_sid": "CR" + HEX, "fcm_credential_sid": None},
        totp={"issuer": "test-issuer", "time_step": 30, "code_length": 3, "skew": 2},
        whatsapp={"msg_service_sid": "MG" + HEX, "from": "whatsapp:+1234567890"},
        passkeys={
            "relying_party": {
                "id": "www.mydomain.com",
                "name": "My domain",
                "origins": ["www.mydomain.com", "www.login.mydomain.com"],
            },
            "authenticator_attachment": "",
            "discoverable_credentials": None,
            "user_verification": "discouraged",
        },
    )
    return body


def service_page() -> dict:
    return {
        "services": [service(), configured_service()],
        "meta": {
            "page": 0,
            "page_size": 2,
            "first_page_url": f"{BASE}/v2/Services?PageSize=2&Page=0",
            "previous_page_url": None,
            "url": f"{BASE}/v2/Services?PageSize=2&Page=0",
            "next_page_url": f"{BASE}/v2/Services?PageSize=2&Page=1&PageToken=PT1",
            "key": "services",
        },
    }


def verification() -> dict:
    return {
        "sid": VERIFICATION_SID,
        "service_sid": SERVICE_SID,
        "account_sid": ACCOUNT_SID,
        "to": "+15017122661",
        "channel": "sms",
        "status": "pending",
        "valid": False,
        "lookup": {},
        "amount": None,
        "payee": None,
        "send_code_attempts": [{"attempt_sid": ATTEMPT_SID, "channel": "SMS", "time": WHEN}],
        "date_created": WHEN,
        "date_updated": WHEN,
        "sna": None,
        "url": f"{SERVICE_URL}/Verifications/{VERIFICATION_SID}",
    }


def missed_call_verification() -> dict:
    """Ours: the user rings call_to; a resend on another channel keeps the same sid."""
    body = verification()
    body.update(channel="missed_call", call_to="+14155550100")
    body["send_code_attempts"].append(
        {"attempt_sid": "VL" + "f" * 32, "channel": "missed_call", "time": WHEN}
    )
    return body


def sna_verification() -> dict:
    body = verification()
    body.update(
        channel="sna",
        lookup={
            "carrier": {
                "mobile_country_code": "311",
                "type": "mobile",
                "error_code": None,
                "mobile_network_code": "180",
                "name": "T-Mobile USA, Inc.",
            }
        },
        sna={"url": "https://mi.dnlsrv.com/m/id/ANBByzx7?data=AAAg&cipherSalt=yANe"},
        send_code_attempts=[{"attempt_sid": ATTEMPT_SID, "channel": "sna", "time": WHEN}],
    )
    return body


def verification_check() -> dict:
    return {
        "sid": VERIFICATION_SID,
        "service_sid": SERVICE_SID,
        "account_sid": ACCOUNT_SID,
        "to": "+15017122661",
        "channel": "sms",
        "status": "approved",
        "valid": True,
        "amount": None,
        "payee": None,
        "date_created": WHEN,
        "date_updated": WHEN,
        "sna_attempts_error_codes": [],
    }


def wrong_code_check() -> dict:
    """A wrong code is a 200 too: still pending, not valid."""
    return {**verification_check(), "status": "pending", "valid": False}


def sna_check() -> dict:
    return {
        **verification_check(),
        "channel": "sna",
        "sna_attempts_error_codes": [{"attempt_sid": ATTEMPT_SID, "code": 60001}],
    }


def error() -> dict:
    return {
        "code": 60200,
        "message": "Invalid parameter: To",
        "more_info": "https://www.twilio.com/docs/errors/60200",
        "status": 400,
    }


def our_error() -> dict:
    return {
        "code": 93001,
        "message": "No missed call arrived",
        "more_info": "https://ivr.example.test/docs/errors/93001",
        "status": 409,
        "details": {"call_to": "+14155550100"},
    }


EXAMPLES = {
    "service": service,
    "service_page": service_page,
    "verification": verification,
    "verification_check": verification_check,
    "error": error,
}
VALID = [
    *EXAMPLES.items(),
    ("service", configured_service),
    ("service_page", lambda: {**service_page(), "services": []}),
    ("verification", missed_call_verification),
    ("verification", sna_verification),
    ("verification_check", wrong_code_check),
    ("verification_check", sna_check),
    ("verification_check", lambda: {**verification_check(), "sna_attempts_error_codes": None}),
    ("error", our_error),
]


def failure(kind: str, body: dict) -> str:
    with pytest.raises(AssertionError) as raised:
        assert_matches(kind, body)
    return str(raised.value)


def test_the_schema_is_draft_2020_12_and_names_its_source():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(KINDS) <= set(SCHEMA["$defs"])
    assert "twilio-oai" in SCHEMA["description"]
    assert "2026-04-14" in SCHEMA["description"]


def test_every_object_in_the_schema_forbids_extra_fields():
    def objects(node, at="$"):
        if isinstance(node, dict):
            if "properties" in node:
                yield at, node
            for key, value in node.items():
                yield from objects(value, f"{at}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from objects(value, f"{at}[{index}]")

    found = list(objects(SCHEMA["$defs"]))
    assert len(found) > 10
    for at, node in found:
        if "type" in node:  # the if/then/else parts only constrain; they describe no object
            assert node.get("additionalProperties") is False, at


def test_our_additions_are_marked_as_ours():
    defs = SCHEMA["$defs"]
    assert "ours (not in Twilio)" in defs["verification"]["properties"]["call_to"]["description"]
    assert "ours (not in Twilio)" in defs["channel"]["description"]
    assert "call_to" not in defs["verification"]["required"]


@pytest.mark.parametrize(("kind", "build"), VALID, ids=lambda v: getattr(v, "__name__", v))
def test_twilio_shaped_bodies_pass(kind, build):
    assert_matches(kind, build())


@pytest.mark.parametrize(
    ("kind", "field"),
    [(kind, field) for kind, build in EXAMPLES.items() for field in build()],
)
def test_a_missing_field_fails(kind, field):
    body = EXAMPLES[kind]()
    del body[field]
    assert f"'{field}' is a required property" in failure(kind, body)


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("service", ()),
        ("service", ("push",)),
        ("service", ("totp",)),
        ("service", ("passkeys", "relying_party")),
        ("service", ("links",)),
        ("service_page", ("meta",)),
        ("verification", ()),
        ("verification", ("send_code_attempts", 0)),
        ("verification_check", ()),
        ("error", ()),
    ],
)
def test_an_extra_or_renamed_field_fails(kind, where):
    body = EXAMPLES[kind]()
    target = body
    for step in where:
        target = target[step]
    target["friendlyName"] = "x"
    assert "'friendlyName' was unexpected" in failure(kind, body)


def test_a_renamed_field_fails_twice():
    body = service()
    body["verificationChecks"] = body["links"].pop("verification_checks")
    message = failure("service", body)
    assert "'verification_checks' is a required property" in message
    assert "'verificationChecks' was unexpected" in message


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("service", {"code_length": "6"}),
        ("service", {"code_length": 6.0}),
        ("service", {"lookup_enabled": "false"}),
        ("service", {"push": None}),  # objects of nulls, never null
        ("service", {"totp": None}),
        ("verification", {"lookup": None}),  # {} when lookup is off
        ("verification", {"send_code_attempts": None}),
        ("verification", {"valid": "false"}),
        ("verification_check", {"amount": 0}),
        ("error", {"code": "60200"}),
        ("error", {"status": "400"}),
    ],
)
def test_a_wrong_type_fails(kind, change):
    message = failure(kind, {**EXAMPLES[kind](), **change})
    assert f"$.{next(iter(change))}: " in message


def test_code_length_as_a_string_fails_on_its_path():
    message = failure("service", {**service(), "code_length": "6"})
    assert "$.code_length: '6' is not of type 'integer'" in message


@pytest.mark.parametrize(
    "date",
    [
        "2015-07-30T20:00:00.123Z",  # fractional seconds
        "2015-07-30T20:00:00.000000Z",
        "2015-07-30T20:00:00+00:00",
        "2015-07-30T20:00:00",
        "2015-07-30 20:00:00Z",
        "Thu, 30 Jul 2015 20:00:00 +0000",  # the RFC 2822 the field descriptions mention
        "2015-07-30T20:00:00Z\n",
        "2015-13-30T20:00:00Z",
        "2015-07-30T20:00:00z",
    ],
)
def test_a_date_not_in_the_one_form_twilio_python_parses_fails(date):
    assert "$.date_created: " in failure("verification", {**verification(), "date_created": date})


def test_dates_are_checked_everywhere():
    body = service_page()
    body["services"][1]["date_updated"] = "2015-07-30T20:00:00.5Z"
    assert "$.services[1].date_updated: " in failure("service_page", body)
    body = verification()
    body["send_code_attempts"][0]["time"] = "2015-07-30T20:00:00.5Z"
    assert "$.send_code_attempts[0].time: " in failure("verification", body)


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/v1/verifications/{VERIFICATION_SID}",
        f"{BASE}/v2/Services/{SERVICE_SID}/Verification/{VERIFICATION_SID}",
        f"{BASE}/v2/Services/{SERVICE_SID}/VerificationCheck",
        f"{BASE}/prefix/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}",
        f"{BASE}/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}/",
        f"/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}",  # relative
        f"ftp://127.0.0.1/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}",
        f"{BASE}/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}\n",
    ],
)
def test_a_verification_url_on_another_path_fails(url):
    assert "$.url: " in failure("verification", {**verification(), "url": url})


def test_a_verification_url_naming_other_sids_fails():
    other = f"{BASE}/v2/Services/VA{'f' * 32}/Verifications/{VERIFICATION_SID}"
    assert "does not end in" in failure("verification", {**verification(), "url": other})


@pytest.mark.parametrize(
    ("link", "path"),
    [
        ("verification_checks", "VerificationChecks"),  # Twilio's is singular
        ("verifications", "Verification"),
        ("rate_limits", "Ratelimits"),
        ("access_tokens", "Webhooks"),
    ],
)
def test_a_link_to_the_wrong_path_fails(link, path):
    body = service()
    body["links"][link] = f"{SERVICE_URL}/{path}"
    assert f"$.links.{link}: " in failure("service", body)


def test_a_service_whose_url_or_links_name_another_sid_fails():
    other = f"{BASE}/v2/Services/VA{'f' * 32}"
    message = failure("service", {**service(), "url": other})
    assert "does not name sid" in message
    body = service()
    body["links"]["webhooks"] = f"{other}/Webhooks"
    assert "$.links.webhooks: " in failure("service", body)


def test_a_relative_next_page_url_fails():
    body = service_page()
    body["meta"]["next_page_url"] = "/v2/Services?PageSize=2&Page=1"
    assert "$.meta.next_page_url: " in failure("service_page", body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sid", "VE" + HEX),
        ("sid", "VA" + HEX.upper()),
        ("sid", "VA" + HEX[:-1]),
        ("account_sid", "SK" + HEX),
        ("sid", None),
    ],
)
def test_a_malformed_sid_fails(field, value):
    assert f"$.{field}: " in failure("service", {**service(), field: value})


def test_an_attempt_needs_exactly_its_three_fields():
    body = verification()
    body["send_code_attempts"][0] = {"attempt_sid": "VE" + HEX, "channel": "S M S"}
    message = failure("verification", body)
    assert "'time' is a required property" in message
    assert "$.send_code_attempts[0].attempt_sid: " in message
    assert "$.send_code_attempts[0].channel: " in message


@pytest.mark.parametrize("channel", ["SMS", "voice", "auto", "rcs", ""])
def test_a_channel_outside_the_enum_fails(channel):
    body = {**verification_check(), "channel": channel}
    assert "$.channel: " in failure("verification_check", body)


def test_a_status_outside_the_enum_fails():
    assert "$.status: " in failure("verification", {**verification(), "status": "sent"})


@pytest.mark.parametrize(
    ("status", "valid"), [("approved", False), ("pending", True), ("canceled", True)]
)
def test_valid_is_true_exactly_when_approved(status, valid):
    body = {**verification_check(), "status": status, "valid": valid}
    assert "$.valid: " in failure("verification_check", body)


def test_call_to_is_ours_on_a_verification_only_and_must_be_e164():
    assert "$.call_to: " in failure("verification", {**verification(), "call_to": "4155550100"})
    body = {**verification_check(), "call_to": "+14155550100"}
    assert "'call_to' was unexpected" in failure("verification_check", body)


@pytest.mark.parametrize("field", ["url", "lookup", "send_code_attempts", "sna"])
def test_a_check_carries_no_verification_only_field(field):
    body = {**verification_check(), field: verification()[field]}
    assert f"'{field}' was unexpected" in failure("verification_check", body)


def test_an_error_with_type_and_title_fails():
    body = {**error(), "type": "https://www.twilio.com/docs/errors/60200", "title": "Bad"}
    message = failure("error", body)
    assert "'title', 'type' were unexpected" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"more_info": "https://www.twilio.com/docs/errors/20404"}, "is not code 60200's"),
        ({"more_info": "https://www.twilio.com/docs/api/errors/60200"}, "$.more_info: "),
        ({"more_info": "http://ivr.example.test/errors/60200"}, "$.more_info: "),
        ({"more_info": "/docs/errors/60200"}, "$.more_info: "),
        ({"status": 200}, "$.status: "),
        ({"status": 600}, "$.status: "),
        ({"details": "text"}, "$.details: "),
    ],
)
def test_a_malformed_error_fails(change, expected):
    assert expected in failure("error", {**error(), **change})


def test_every_problem_is_listed_with_its_path():
    body = verification()
    body["date_created"] = "2015-07-30T20:00:00.1Z"
    body["extra"] = 1
    del body["sna"]
    body["lookup"] = {"carrier": {}}
    message = failure("verification", body)
    lines = [line for line in message.splitlines() if re.match(r"\s+\$", line)]
    assert len(lines) >= 4
    assert "$.date_created: " in message
    assert "'extra' was unexpected" in message
    assert "'sna' is a required property" in message
    assert "$.lookup.carrier: " in message


def test_the_input_is_not_changed_and_an_unknown_kind_is_refused():
    body = service()
    before = copy.deepcopy(body)
    assert_matches("service", body)
    assert body == before
    with pytest.raises(ValueError, match="unknown kind"):
        assert_matches("services", body)
