"""The Verify-style API: sending, re-sending, checking, limits, and every kind of bad input."""

from __future__ import annotations

import time

import jsonschema
import pytest

from ivr.config import Rate
from ivr.web.public import openapi_document
from tests.conftest import API_TOKEN, CALLER_ID, PUBLIC_BASE_URL, Api, verification_key

TO = "+14155550123"


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    document = openapi_document()
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def assert_problem(response, status: int, reason: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    schema_validator("Problem").validate(problem)
    assert problem["type"] == f"urn:ivr:problem:{reason}"
    assert problem["status"] == status
    if field:
        assert problem["field"] == field
    return problem


def sms_code(twilio_api) -> str:
    body = twilio_api.messages()[-1].value("Body")
    return next(word for word in body.replace(".", " ").split() if word.isdigit())


# -- starting --------------------------------------------------------------------------------


def test_start_returns_201_with_a_pending_verification_matching_the_schema(api, twilio_api):
    response = api.start(to=TO, channel="call")
    assert response.status_code == 201
    body = response.get_json()
    schema_validator("Verification").validate(body)
    assert response.headers["Location"] == f"/v1/verifications/{body['sid']}"
    assert body["to"] == TO and body["channel"] == "call" and body["status"] == "pending"
    assert body["valid"] is False
    assert len(body["send_attempts"]) == 1


def test_national_number_with_a_country_hint_is_normalised_to_e164(api, twilio_api):
    body = api.start(to="(415) 555-0123", channel="call", country="US").get_json()
    assert body["to"] == TO
    assert twilio_api.calls()[-1].value("To") == TO


def test_sms_carries_app_name_code_and_do_not_share_line(api, twilio_api):
    verification = api.start(to=TO, channel="sms").get_json()
    message = twilio_api.messages()[-1]
    assert message.value("To") == TO and message.value("From") == CALLER_ID
    assert message.value("StatusCallback") == f"{PUBLIC_BASE_URL}/sms/status/{verification['sid']}"
    body = message.value("Body")
    assert "Acme" in body and "Do not share" in body
    code = sms_code(twilio_api)
    assert len(code) == 6
    assert api.check(code, to=TO).get_json()["status"] == "approved"


def test_sms_can_carry_the_origin_bound_line_for_browser_autofill(make_app, twilio_api):
    api = Api(make_app(sms_origin_domain="example.com").test_client())
    api.start(to=TO, channel="sms")
    body = twilio_api.messages()[-1].value("Body")
    assert body.splitlines()[-1] == f"@example.com #{sms_code(twilio_api)}"


def test_otp_length_setting_gives_longer_codes(make_app, twilio_api):
    Api(make_app(otp_length=8).test_client()).start(to=TO, channel="sms")
    assert len(sms_code(twilio_api)) == 8


def test_verify_style_form_fields_are_accepted(client, twilio_api):
    response = client.post(
        "/v1/verifications",
        data={"To": TO, "Channel": "sms"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status_code == 201
    code = sms_code(twilio_api)
    check = client.post(
        "/v1/verifications/check",
        data={"To": TO, "Code": code},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert check.get_json()["valid"] is True


def test_resend_keeps_the_sid_the_code_and_the_failure_count(api, twilio_api):
    first = api.start(to=TO, channel="sms").get_json()
    code = sms_code(twilio_api)
    assert api.check("000000" if code != "000000" else "111111", to=TO).status_code == 200
    again = api.start(to=TO, channel="call").get_json()
    assert again["sid"] == first["sid"]
    assert again["channel"] == "call"
    assert again["check_attempts"] == 1
    assert [a["channel"] for a in again["send_attempts"]] == ["sms", "call"]
    assert again["expires_at"] == first["expires_at"]
    api.start(to=TO, channel="sms")
    assert sms_code(twilio_api) == code


def test_a_new_verification_starts_after_the_previous_one_ended(api, twilio_api):
    first = api.start(to=TO, channel="sms").get_json()
    api.check(sms_code(twilio_api), to=TO)
    second = api.start(to=TO, channel="sms").get_json()
    assert second["sid"] != first["sid"]
    assert second["check_attempts"] == 0


# -- checking --------------------------------------------------------------------------------


def test_right_code_approves_exactly_once(api, twilio_api):
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    result = api.check(code, sid=sid)
    assert result.status_code == 200
    schema_validator("CheckResult").validate(result.get_json())
    assert result.get_json() == {"sid": sid, "to": TO, "status": "approved", "valid": True}
    assert_problem(api.check(code, to=TO), 404, "not_found")
    problem = assert_problem(api.check(code, sid=sid), 409, "not_pending")
    assert problem["verification_status"] == "approved"
    assert api.get(f"/v1/verifications/{sid}").get_json()["status"] == "approved"


def test_wrong_code_stays_pending_and_counts(api, twilio_api):
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    wrong = "1" * 6 if sms_code(twilio_api) != "1" * 6 else "2" * 6
    assert api.check(wrong, sid=sid).get_json() == {
        "sid": sid,
        "to": TO,
        "status": "pending",
        "valid": False,
    }
    assert api.get(f"/v1/verifications/{sid}").get_json()["check_attempts"] == 1


def test_after_max_attempts_even_the_right_code_fails(make_app, twilio_api):
    api = Api(make_app(otp_max_attempts=3).test_client())
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    wrong = "1" * 6 if code != "1" * 6 else "2" * 6
    statuses = [api.check(wrong, sid=sid).get_json()["status"] for _ in range(3)]
    assert statuses == ["pending", "pending", "max_attempts_reached"]
    problem = assert_problem(api.check(code, sid=sid), 409, "not_pending")
    assert problem["verification_status"] == "max_attempts_reached"


def test_number_failure_budget_survives_new_verifications(make_app, twilio_api):
    api = Api(make_app(otp_max_attempts=2, check_failure_limit_per_number="3/1h").test_client())
    api.start(to=TO, channel="sms")
    wrong = "999999" if sms_code(twilio_api) != "999999" else "888888"
    api.check(wrong, to=TO)
    api.check(wrong, to=TO)  # max_attempts_reached
    api.start(to=TO, channel="sms")
    code = sms_code(twilio_api)
    api.check("999999" if code != "999999" else "888888", to=TO)  # budget now spent
    problem = assert_problem(api.check(code, to=TO), 429, "rate_limited")
    assert problem["scope"] == "check_failures"
    assert int(api.check(code, to=TO).headers["Retry-After"]) > 3000


def test_a_code_expires_after_its_ttl(make_app, twilio_api):
    api = Api(make_app(otp_ttl_seconds=1).test_client())
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    code = sms_code(twilio_api)
    deadline = time.monotonic() + 30  # the TTL is 1 s: poll, a loaded machine may be slow
    while api.get(f"/v1/verifications/{sid}").get_json()["status"] != "expired":
        assert time.monotonic() < deadline, "the verification never expired"
        time.sleep(0.05)
    problem = assert_problem(api.check(code, sid=sid), 409, "not_pending")
    assert problem["verification_status"] == "expired"


def test_check_needs_a_code_and_a_target(api):
    assert_problem(api.post("/v1/verifications/check", {"to": TO}), 400, "missing_field", "code")
    assert_problem(api.check("123456"), 400, "missing_field", "to")
    for code in ("12a456", "12", "1" * 11, 123456, ["1"], "\uff11\uff12\uff13\uff14\uff15\uff16"):
        assert_problem(api.check(code, to=TO), 400, "invalid_code", "code")
    assert_problem(api.check("123456", sid="VE123"), 400, "invalid_sid", "sid")
    assert_problem(api.check("123456", to="not a number"), 400, "invalid_number", "to")
    assert_problem(api.check("123456", to=TO), 404, "not_found")
    assert_problem(api.check("123456", sid="VE" + "0" * 32), 404, "not_found")


def test_a_sid_with_another_number_approves_nothing_and_says_so(api, twilio_api):
    """A client that takes the sid from a form and the number from its session is safe, and
    told what went wrong (but not which number the sid is for)."""
    mine = api.start(to="+12125550101", channel="sms").get_json()["sid"]
    my_code = sms_code(twilio_api)
    api.start(to=TO, channel="sms")
    response = api.check(my_code, sid=mine, to=TO)
    problem = assert_problem(response, 404, "number_mismatch", "to")
    assert problem["detail"] == "this verification is for another number"
    assert "2125550101" not in response.get_data(as_text=True)
    assert api.get(f"/v1/verifications/{mine}").get_json()["check_attempts"] == 0
    approved = api.check(my_code, sid=mine, to="+12125550101").get_json()
    assert approved["valid"] is True
    assert approved["to"] == "+12125550101"


# -- reading and canceling -----------------------------------------------------------------------


def test_get_and_cancel(api, twilio_api):
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    fetched = api.get(f"/v1/verifications/{sid}").get_json()
    schema_validator("Verification").validate(fetched)
    canceled = api.post(f"/v1/verifications/{sid}/cancel")
    assert canceled.status_code == 200
    assert canceled.get_json()["status"] == "canceled"
    assert_problem(api.check(sms_code(twilio_api), sid=sid), 409, "not_pending")
    again = assert_problem(api.post(f"/v1/verifications/{sid}/cancel"), 409, "not_pending")
    assert again["verification_status"] == "canceled"


@pytest.mark.parametrize("sid", ["VE" + "0" * 32, "nope", "VE" + "Z" * 32, "x" * 500])
def test_unknown_or_malformed_sids_are_404(api, sid):
    assert_problem(api.get(f"/v1/verifications/{sid}"), 404, "not_found")
    assert_problem(api.post(f"/v1/verifications/{sid}/cancel"), 404, "not_found")


@pytest.mark.parametrize("sid", ["nope", "VE" + "Z" * 32, "ve" + "0" * 32, "VE123"])
def test_a_malformed_sid_is_told_what_a_sid_looks_like_wherever_it_is_sent(api, sid):
    shape = "VE followed by 32 hex digits (0-9, a-f)"
    for response in (
        api.get(f"/v1/verifications/{sid}"),
        api.post(f"/v1/verifications/{sid}/cancel"),
    ):  # a path names a resource: 404, as for any sid that names nothing
        problem = assert_problem(response, 404, "not_found")
        assert problem["detail"] == f"no verification with this sid: a sid is {shape}"
    # A body's field with the wrong shape breaks the request's schema, as a bad code does.
    problem = assert_problem(api.check("123456", sid=sid), 400, "invalid_sid", "sid")
    assert problem["detail"] == f"sid must be {shape}"


def test_a_well_formed_sid_that_names_nothing_says_so_on_every_route(api):
    sid = "VE" + "0" * 32
    for response in (
        api.get(f"/v1/verifications/{sid}"),
        api.post(f"/v1/verifications/{sid}/cancel"),
        api.check("123456", sid=sid),
    ):
        assert assert_problem(response, 404, "not_found")["detail"] == (
            "no verification with this sid"
        )
    problem = assert_problem(api.check("123456", to=TO), 404, "not_found")
    assert problem["detail"] == "no verification is pending for this number"


# -- limits ------------------------------------------------------------------------------------


def test_sixth_send_to_a_number_within_ten_minutes_is_429(api, twilio_api):
    for _ in range(5):
        assert api.start(to=TO, channel="sms").status_code == 201
    response = api.start(to=TO, channel="sms")
    problem = assert_problem(response, 429, "rate_limited")
    assert problem["scope"] == "number"
    assert 0 < int(response.headers["Retry-After"]) <= 600
    assert len(twilio_api.messages()) == 5


def test_sends_are_limited_per_number_prefix(make_app, twilio_api):
    api = Api(make_app(send_limit_per_prefix="3/10m").test_client())
    for suffix in ("0101", "0102", "0103"):
        assert api.start(to=f"+1415555{suffix}", channel="sms").status_code == 201
    problem = assert_problem(api.start(to="+14155550104", channel="sms"), 429, "rate_limited")
    assert problem["scope"] == "prefix"
    assert api.start(to="+14155560101", channel="sms").status_code == 201


def test_sends_are_limited_per_api_token(make_app, twilio_api):
    api = Api(make_app(send_limit_per_token="2/1h").test_client())
    assert api.start(to="+14155550101", channel="sms").status_code == 201
    assert api.start(to="+12125550101", channel="sms").status_code == 201
    problem = assert_problem(api.start(to="+13125550101", channel="sms"), 429, "rate_limited")
    assert problem["scope"] == "client"


def test_a_refused_send_does_not_use_up_the_other_windows(make_app, twilio_api):
    api = Api(make_app(send_limit_per_number="1/10m", send_limit_per_token="2/1h").test_client())
    assert api.start(to="+14155550101", channel="sms").status_code == 201
    assert api.start(to="+14155550101", channel="sms").status_code == 429
    assert api.start(to="+12125550101", channel="sms").status_code == 201


# -- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "channel", "reason"),
    [
        ("+19005550123", "call", "number_type_refused"),  # US premium rate
        ("+447012345678", "call", "number_type_refused"),  # UK personal number
        ("+441212345678", "sms", "channel_unsupported"),  # UK landline, no SMS
        ("+8613812345678", "call", "country_not_allowed"),
        ("+1415", "call", "invalid_number"),
        ("hello", "sms", "invalid_number"),
        (14155550123, "sms", "invalid_number"),
    ],
)
def test_refused_numbers_get_their_own_reason(api, twilio_api, to, channel, reason):
    assert_problem(api.start(to=to, channel=channel), 400, reason, "to")
    assert twilio_api.requests == []


def test_allowed_countries_setting_opens_a_country(make_app, twilio_api):
    api = Api(make_app(allowed_countries="CN").test_client())
    assert api.start(to="+8613812345678", channel="sms").status_code == 201
    assert_problem(api.start(to=TO, channel="sms"), 400, "country_not_allowed")


# -- authentication and bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        f"Token {API_TOKEN}",
        "Bearer wrong",
        "Bearer " + "x" * 5000,
        f"Bearer {API_TOKEN}x",
    ],
)
def test_requests_without_a_valid_bearer_token_are_401(client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path in (
        ("post", "/v1/verifications"),
        ("post", "/v1/verifications/check"),
        ("get", "/v1/verifications/VE" + "0" * 32),
        ("get", "/v1/simulator/outbox"),
        ("post", "/v1/simulator/calls"),
        ("get", "/v1/stats/missed-calls"),
    ):
        response = getattr(client, method)(path, json={"to": TO, "channel": "sms"}, headers=headers)
        problem = assert_problem(response, 401, "unauthorized")
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert "token" in problem["detail"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason", "field"),
    [
        ("{not json", "application/json", 400, "invalid_json", None),
        ("[1, 2]", "application/json", 400, "invalid_json", None),
        ('"to"', "application/json", 400, "invalid_json", None),
        ("", "application/json", 400, "invalid_json", None),
        ("to=x", "text/plain", 415, "unsupported_media_type", None),
        ('{"channel": "call"}', "application/json", 400, "missing_field", "to"),
        ('{"to": "+14155550123"}', "application/json", 400, "missing_field", "channel"),
        (
            '{"to": "+14155550123", "channel": "fax"}',
            "application/json",
            400,
            "invalid_channel",
            "channel",
        ),
        (
            '{"to": "+14155550123", "channel": ["sms"]}',
            "application/json",
            400,
            "invalid_channel",
            "channel",
        ),
        (
            '{"to": "+14155550123", "channel": "sms", "locale": "xx-YY"}',
            "application/json",
            400,
            "unknown_locale",
            "locale",
        ),
        (
            '{"to": "+14155550123", "channel": "sms", "locale": 5}',
            "application/json",
            400,
            "unknown_locale",
            "locale",
        ),
        (
            '{"to": "4155550123", "channel": "sms", "country": "XX"}',
            "application/json",
            400,
            "invalid_country",
            "country",
        ),
        (
            '{"to": "4155550123", "channel": "sms", "country": 1}',
            "application/json",
            400,
            "invalid_country",
            "country",
        ),
        (
            '{"to": "+14155550123", "channel": "sms", "coed": "1"}',
            "application/json",
            400,
            "unknown_field",
            None,
        ),
        ('{"to": null, "channel": "sms"}', "application/json", 400, "missing_field", "to"),
        ('{"to": {"a": 1}, "channel": "sms"}', "application/json", 400, "invalid_number", "to"),
    ],
)
def test_bad_start_requests_get_a_clear_problem(
    api, twilio_api, body, content_type, status, reason, field
):
    response = api.client.post(
        "/v1/verifications", data=body, headers={**api.headers, "Content-Type": content_type}
    )
    problem = assert_problem(response, status, reason, field)
    assert problem["detail"]
    assert twilio_api.requests == []


JSON_START = '{"to": "+14155550123", "channel": "sms"}'


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        ("application/x-www-form-urlencoded", "its Content-Type says a form"),  # curl -d
        (None, "it has no Content-Type"),
        ("text/plain", "its Content-Type is text/plain"),
    ],
)
def test_json_sent_without_its_content_type_is_told_to_send_it(api, twilio_api, content_type, says):
    headers = {**api.headers, **({"Content-Type": content_type} if content_type else {})}
    for path, document in (
        ("/v1/verifications", JSON_START),
        ("/v1/verifications/check", '{"to": "+14155550123", "code": "123456"}'),
        ("/v1/customers/12345678", '{"phone": "+14155550161", "name": "Ada"}'),
    ):
        send = api.client.put if path.startswith("/v1/customers") else api.client.post
        response = send(path, data=document, headers=headers)
        problem = assert_problem(response, 415, "unsupported_media_type")
        assert says in problem["detail"]
        assert "send the header 'Content-Type: application/json'" in problem["detail"]
        assert "unknown field" not in problem["detail"]
    assert twilio_api.requests == []


def test_a_body_neither_json_nor_a_form_names_both_types(api):
    response = api.client.post("/v1/verifications", data="to=x", headers=api.headers)
    problem = assert_problem(response, 415, "unsupported_media_type")
    assert problem["detail"] == (
        "send 'Content-Type: application/json' (or application/x-www-form-urlencoded): "
        "the request has none"
    )


def form_post(api, path: str, text: str):
    headers = {**api.headers, "Content-Type": "application/x-www-form-urlencoded"}
    return api.client.post(path, data=text, headers=headers)


@pytest.mark.parametrize("number", ["+14155550123", "+1 415 555 0123"])
def test_a_plus_that_form_encoding_turned_into_a_space_is_explained(api, twilio_api, number):
    start = form_post(api, "/v1/verifications", f"to={number}&channel=sms")
    problem = assert_problem(start, 400, "invalid_number", "to")
    assert "what a '+' becomes in a form-encoded body" in problem["detail"]
    assert "%2B" in problem["detail"]
    check = form_post(api, "/v1/verifications/check", f"to={number}&code=123456")
    assert "%2B" in assert_problem(check, 400, "invalid_number", "to")["detail"]
    assert twilio_api.requests == []
    encoded = form_post(api, "/v1/verifications", "to=%2B14155550123&channel=sms")
    assert encoded.status_code == 201, encoded.get_data(as_text=True)


def test_huge_bodies_are_refused_with_413(api, twilio_api):
    response = api.client.post(
        "/v1/verifications",
        data='{"to": "' + "1" * 100_000 + '"}',
        headers={**api.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "request_entity_too_large")


def test_unknown_routes_and_methods_answer_problem_json(api):
    assert_problem(api.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(
        api.client.delete("/v1/verifications", headers=api.headers), 405, "method_not_allowed"
    )


# -- when Twilio fails -----------------------------------------------------------------------


def test_twilio_5xx_is_retried_then_502_and_the_verification_is_marked_failed(api, twilio_api):
    twilio_api.fail_next(times=3, status=503)
    response = api.start(to=TO, channel="call")
    problem = assert_problem(response, 502, "carrier_upstream_error")
    assert "503" in problem["detail"]
    assert len(twilio_api.calls()) == 3, "one try and two bounded retries"
    assert problem["verification_status"] == "failed"
    stored = api.get(f"/v1/verifications/{problem['sid']}").get_json()
    assert stored["status"] == "failed"
    assert stored["send_attempts"][0]["status"] == "failed"
    # Nothing half-created: the number is free for a new verification.
    assert api.start(to=TO, channel="call").get_json()["sid"] != problem["sid"]


@pytest.mark.parametrize("status", [429, 503])
def test_a_twilio_refusal_before_acting_is_absorbed_by_the_retry(api, twilio_api, status):
    twilio_api.fail_next(times=1, status=status)
    assert api.start(to=TO, channel="call").status_code == 201
    assert len(twilio_api.calls()) == 2


@pytest.mark.parametrize("status", [500, 502, 504])
def test_twilio_errors_that_may_follow_a_created_call_are_not_retried(api, twilio_api, status):
    """A retry here could ring the callee twice: one request, then 502 to the client."""
    twilio_api.fail_next(times=1, status=status)
    assert_problem(api.start(to=TO, channel="call"), 502, "carrier_upstream_error")
    assert len(twilio_api.calls()) == 1


def test_a_twilio_timeout_is_not_retried_and_answers_503(make_app, twilio_api):
    """The call may have been placed after all: asking again could place it twice."""
    api = Api(make_app(twilio_http_timeout=0.3).test_client())
    twilio_api.fail_next(times=1, status=201, delay=0.6)
    problem = assert_problem(api.start(to=TO, channel="sms"), 503, "carrier_unreachable")
    assert "did not answer" in problem["detail"]
    assert problem["verification_status"] == "failed"
    assert len(twilio_api.messages()) == 1


def test_twilio_out_of_reach_is_retried_then_503(make_app, twilio_api):
    api = Api(make_app(twilio_api_base_url="http://127.0.0.1:9").test_client())
    problem = assert_problem(api.start(to=TO, channel="call"), 503, "carrier_unreachable")
    assert problem["verification_status"] == "failed"


def test_a_failed_resend_leaves_the_verification_pending(api, twilio_api):
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    twilio_api.fail_next(times=1, status=502)
    problem = assert_problem(api.start(to=TO, channel="call"), 502, "carrier_upstream_error")
    assert problem["sid"] == sid and problem["verification_status"] == "pending"
    stored = api.get(f"/v1/verifications/{sid}").get_json()
    assert [a["status"] for a in stored["send_attempts"]] == ["queued", "failed"]
    assert api.check(sms_code(twilio_api), to=TO).get_json()["valid"] is True


def test_twilio_refusing_the_number_is_a_400_on_to(api, twilio_api):
    twilio_api.fail_next(
        status=400, body={"code": 21211, "status": 400, "message": "The 'To' number is not valid."}
    )
    problem = assert_problem(api.start(to=TO, channel="call"), 400, "carrier_invalid_number", "to")
    assert problem["provider_code"] == 21211


def test_twilio_refusing_our_credentials_is_a_502(api, twilio_api):
    twilio_api.fail_next(status=401, body={"code": 20003, "status": 401, "message": "Authenticate"})
    assert_problem(api.start(to=TO, channel="sms"), 502, "carrier_rejected")


def send_attempt(app, channel: str):
    """What the API's start does before calling the carrier: a verification (or a re-send)
    with one more attempt in the 'requested' state. Lets a test play a race step by step."""
    ivr = app.extensions["ivr"]
    store = ivr.verifications.store
    started = store.start_or_resend(
        new_sid=ivr.code_secrets.new_sid(TO),
        to=TO,
        channel=channel,
        locale="en-US",
        digest="d",
        sealed="s",
        ttl_ms=60_000,
        retention_ms=60_000,
        send_limit=Rate(100, 600),
    )
    return store, started


def test_a_failed_first_send_does_not_end_a_verification_a_resend_delivered(app, twilio_api):
    """Two requests race: the first send (a slow call) fails after the re-send got through."""
    store, first = send_attempt(app, "call")
    _, again = send_attempt(app, "sms")
    sid = first.verification.sid
    assert again.verification.sid == sid
    store.settle_send(sid, again.attempt_index, status="queued", provider_sid="SM" + "1" * 32)
    settled = store.settle_send(sid, first.attempt_index, status="failed", error="timeout")
    assert settled == "pending"
    assert store.settle_send(sid, again.attempt_index, status="failed") == "failed"


def test_a_status_callback_that_beats_the_rest_answer_is_kept(app, client, twilio_api):
    from tests.conftest import twilio_post

    store, started = send_attempt(app, "sms")
    sid, message_sid = started.verification.sid, "SM" + "2" * 32
    response = twilio_post(
        client,
        f"/sms/status/{sid}",
        {"MessageSid": message_sid, "MessageStatus": "undelivered", "ErrorCode": "30003"},
    )
    assert response.status_code == 204
    store.settle_send(sid, started.attempt_index, status="queued", provider_sid=message_sid)
    attempt = store.get(sid).send_attempts[0]
    assert (attempt.status, attempt.error) == ("undelivered", "30003")


def test_a_verification_stays_readable_for_the_retention_after_its_code_lifetime(
    make_app, twilio_api, redis_client
):
    api = Api(make_app(otp_ttl_seconds=600, verification_retention_seconds=60).test_client())
    sid = api.start(to=TO, channel="sms").get_json()["sid"]
    key = verification_key(redis_client, sid)
    assert 650_000 < redis_client.pttl(key) <= 660_000
