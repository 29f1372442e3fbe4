"""The OpenAPI document describes exactly the API the app serves."""

from __future__ import annotations

import re

import jsonschema
import pytest

from tests.conftest import Api


def test_openapi_document_is_served_and_is_openapi_3_1(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_api_route_is_documented_and_every_documented_path_exists(app, client):
    documented = {
        (path, method.upper())
        for path, operations in client.get("/v1/openapi.json").get_json()["paths"].items()
        for method in operations
    }
    served = set()
    for rule in app.url_map.iter_rules():
        documented_prefixes = ("/v1/", "/healthz", "/readyz", "/metrics")
        if not rule.rule.startswith(documented_prefixes) or rule.rule == "/v1/openapi.json":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


def test_component_schemas_are_valid_json_schema(client):
    document = client.get("/v1/openapi.json").get_json()
    for name in document["components"]["schemas"]:
        jsonschema.Draft202012Validator.check_schema(
            {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        )


def documented_statuses(client, path: str, method: str) -> set[int]:
    operation = client.get("/v1/openapi.json").get_json()["paths"][path][method]
    return {int(status) for status in operation["responses"]}


def test_the_statuses_of_bad_sids_and_bad_bodies_are_the_documented_ones(client, api):
    malformed, unknown = "nope", "VE" + "0" * 32
    form = {**api.headers, "Content-Type": "application/x-www-form-urlencoded"}
    cases = [
        ("/v1/verifications/{sid}", "get", api.get(f"/v1/verifications/{malformed}"), 404),
        (
            "/v1/verifications/{sid}/cancel",
            "post",
            api.post(f"/v1/verifications/{malformed}/cancel"),
            404,
        ),
        ("/v1/verifications/check", "post", api.check("123456", sid=malformed), 400),
        ("/v1/verifications/check", "post", api.check("123456", sid=unknown), 404),
        (
            "/v1/verifications/check",
            "post",
            client.post("/v1/verifications/check", data='{"code": "123456"}', headers=form),
            415,
        ),
        (
            "/v1/verifications",
            "post",
            client.post("/v1/verifications", data='{"to": "+14155550123"}', headers=form),
            415,
        ),
    ]
    for path, method, response, status in cases:
        assert response.status_code == status, (path, response.get_data(as_text=True))
        assert status in documented_statuses(client, path, method), (path, method, status)


# -- the request schemas and the server agree ---------------------------------------------------

USER = "+14155550123"
UNKNOWN_SID = "VE" + "0" * 32
CUSTOMER = {"phone": "+14155550161", "name": "Ann Lee"}


FORMS = ["application/x-www-form-urlencoded", "multipart/form-data"]
BODY_MEDIA_TYPES = {"application/json", *FORMS}


def request_schema_validator(
    document: dict, path: str, method: str, media_type: str = "application/json"
) -> jsonschema.Validator:
    """An operation's body schema for `media_type`, its $refs resolved in the document."""
    body = document["paths"][path][method]["requestBody"]
    schema = body["content"][media_type]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


@pytest.mark.parametrize(
    ("path", "url", "body", "allowed"),
    [
        # Neither `to` nor `sid`: nothing to look the code up by.
        ("/v1/verifications/check", None, {"code": "123456"}, False),
        ("/v1/verifications/check", None, {"code": "123456", "to": None, "sid": None}, False),
        ("/v1/verifications/check", None, {"code": "123456", "to": USER}, True),
        ("/v1/verifications/check", None, {"code": "123456", "sid": UNKNOWN_SID, "to": None}, True),
        # An optional field sent as null is left out.
        (
            "/v1/verifications",
            None,
            {"to": USER, "channel": "sms", "country": None, "locale": None},
            True,
        ),
        ("/v1/verifications", None, {"to": USER, "channel": "sms", "country": 1}, False),
        # A customer's id in the body must be one (and the URL's).
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "id": ""}, False),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "id": "1234"}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "name": "   "}, False),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "locale": None}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "locale": ""}, True),
    ],
)
def test_a_body_the_schema_forbids_is_refused_and_one_it_allows_is_not(
    client, api, path, url, body, allowed
):
    document = client.get("/v1/openapi.json").get_json()
    method = "put" if "customers" in path else "post"
    assert request_schema_validator(document, path, method).is_valid(body) is allowed
    response = getattr(api, method)(url or path, body)
    assert (response.status_code == 400) is not allowed, response.get_json()
    assert response.status_code in documented_statuses(client, path, method)


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({"from": "", "to": USER}, False),
        ({"from": USER, "to": "+14155550111", "stir_verstat": {}}, False),
        ({"from": USER, "to": "+14155550111", "stir_verstat": []}, False),
        # A JSON list of keys, never the comma-separated string a form sends.
        ({"from": USER, "to": "+14155550111", "keys": "1"}, False),
        ({"from": USER, "to": "+14155550111", "keys": None, "stir_verstat": None}, True),
        ({"from": USER, "to": "+14155550111", "keys": ["1"]}, True),
    ],
)
def test_the_simulator_refuses_what_its_schema_forbids(simulated_app, body, allowed):
    client = simulated_app.test_client()
    document = client.get("/v1/openapi.json").get_json()
    assert request_schema_validator(document, "/v1/simulator/calls", "post").is_valid(body) is (
        allowed
    )
    response = Api(client).post("/v1/simulator/calls", body)
    assert response.status_code == (200 if allowed else 400), response.get_json()


def test_the_simulator_still_reads_keys_from_a_form(simulated_app):
    client = simulated_app.test_client()
    form = {"from": USER, "to": "+14155550111", "keys": "1,2"}
    response = client.post("/v1/simulator/calls", data=form, headers=Api(client).headers)
    assert response.status_code == 200, response.get_json()


# Each form schema against the server: every value is text, and an empty one is not left out.
@pytest.mark.parametrize("media_type", FORMS)
@pytest.mark.parametrize(
    ("path", "url", "form", "allowed"),
    [
        ("/v1/verifications", None, {"To": USER, "Channel": "sms", "locale": "es_es"}, True),
        ("/v1/verifications", None, {"to": USER, "channel": "sms", "country": "us"}, True),
        # Empty is not left out: a country or a locale that is "" names none.
        ("/v1/verifications", None, {"to": USER, "channel": "sms", "country": ""}, False),
        ("/v1/verifications", None, {"to": USER, "channel": "sms", "locale": ""}, False),
        ("/v1/verifications", None, {"to": USER, "channel": "fax"}, False),
        ("/v1/verifications/check", None, {"Code": "123456", "VerificationSid": UNKNOWN_SID}, True),
        ("/v1/verifications/check", None, {"code": "123456"}, False),
        ("/v1/verifications/check", None, {"code": "123456", "sid": ""}, False),
        ("/v1/verifications/check", None, {"code": "123456", "to": ""}, False),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "sms": " No "}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "sms": ""}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "sms": "off"}, False),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "locale": ""}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "id": "1234"}, True),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "country": ""}, False),
        ("/v1/customers/{customer_id}", "/v1/customers/1234", {**CUSTOMER, "name": " "}, False),
    ],
)
def test_a_form_the_schema_forbids_is_refused_and_one_it_allows_is_not(
    client, api, path, url, form, allowed, media_type
):
    document = client.get("/v1/openapi.json").get_json()
    method = "put" if "customers" in path else "post"
    # The schema names each field once, in lower case; the server matches any case (and the
    # Verify alias VerificationSid), as the document's description says.
    named = {name.lower().replace("verificationsid", "sid"): value for name, value in form.items()}
    validator = request_schema_validator(document, path, method, media_type)
    assert validator.is_valid(named) is allowed
    response = getattr(client, method)(
        url or path, data=form, content_type=media_type, headers=api.headers
    )
    assert (response.status_code == 400) is not allowed, response.get_json()
    assert response.status_code in documented_statuses(client, path, method)


CALL_IN = {"from": USER, "to": "+14155550111"}


@pytest.mark.parametrize("media_type", FORMS)
@pytest.mark.parametrize(
    ("form", "allowed"),
    [
        ({**CALL_IN, "keys": "1,2"}, True),
        # Empty items are skipped: a trailing comma, or no keys at all.
        ({**CALL_IN, "keys": ",1,,2,"}, True),
        ({**CALL_IN, "keys": "", "stir_verstat": ""}, True),
        ({**CALL_IN, "keys": ",".join("1" * 20)}, True),
        ({**CALL_IN, "keys": ",".join("1" * 21)}, False),
        ({**CALL_IN, "keys": "1;2"}, False),
        ({**CALL_IN, "keys": "1" * 33}, False),
        ({**CALL_IN, "stir_verstat": "x" * 65}, False),
    ],
)
def test_the_simulators_form_schema_and_the_server_agree(simulated_app, form, allowed, media_type):
    client = simulated_app.test_client()
    document = client.get("/v1/openapi.json").get_json()
    validator = request_schema_validator(document, "/v1/simulator/calls", "post", media_type)
    assert validator.is_valid(form) is allowed
    response = client.post(
        "/v1/simulator/calls", data=form, content_type=media_type, headers=Api(client).headers
    )
    assert response.status_code == (200 if allowed else 400), response.get_json()


@pytest.mark.parametrize("channel", ["missed_call", "flash_call"])
def test_a_channel_that_is_not_set_up_is_the_documented_400(client, api, channel):
    response = api.start(channel=channel)
    assert response.status_code == 400
    assert response.get_json()["type"] == "urn:ivr:problem:channel_unavailable"
    assert 400 in documented_statuses(client, "/v1/verifications", "post")
    document = client.get("/v1/openapi.json").get_json()
    said = document["components"]["schemas"]["StartRequest"]["properties"]["channel"]
    assert "channel_unavailable" in said["description"]


def test_every_body_is_documented_in_each_media_type_the_server_reads(simulated_app):
    """JSON and both forms, each read (an unknown field is named); any other type is the
    documented 415. Simulated, so the simulator's operations read their bodies too."""
    client = simulated_app.test_client()
    headers = Api(client).headers
    document = client.get("/v1/openapi.json").get_json()
    concrete = {"{customer_id}": "1234", "{call_sid}": "CA" + "0" * 32}
    bodies = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            bodies += 1
            assert set(operation["requestBody"]["content"]) == BODY_MEDIA_TYPES, (path, method)
            url = path
            for name, value in concrete.items():
                url = url.replace(name, value)
            send = getattr(client, method)
            for media_type in sorted(BODY_MEDIA_TYPES):
                data = '{"nothing": 1}' if media_type == "application/json" else {"nothing": "1"}
                response = send(url, data=data, content_type=media_type, headers=headers)
                assert response.status_code == 400, (path, media_type, response.get_json())
                assert response.get_json()["type"] == "urn:ivr:problem:unknown_field"
            response = send(url, data="nothing=1", content_type="text/plain", headers=headers)
            assert response.status_code == 415, (path, response.get_json())
            assert 415 in documented_statuses(client, path, method)
    assert bodies == 5


def test_every_operation_with_a_body_documents_400_413_and_415_and_answers_415(client, api):
    document = client.get("/v1/openapi.json").get_json()
    concrete = {"{customer_id}": "1234", "{call_sid}": "CA" + "0" * 32}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            assert {400, 413, 415} <= documented_statuses(client, path, method), (path, method)
            url = path
            for name, value in concrete.items():
                url = url.replace(name, value)
            response = getattr(client, method)(
                url, data='{"to": "+14155550123"}', headers={**api.headers, "Content-Type": ""}
            )
            assert response.status_code in (415, 404), (path, response.get_json())


def test_every_api_operation_documents_the_stores_503(client):
    document = client.get("/v1/openapi.json").get_json()
    for path, operations in document["paths"].items():
        if path == "/metrics":  # never fails for Redis: it says ivr_redis_up 0
            continue
        for method in operations:
            assert 503 in documented_statuses(client, path, method), (path, method)


def test_the_check_endpoint_is_no_verification_to_get(client, api):
    """`/v1/verifications/check` is the check's: a GET there is a 405, not a lookup of a
    verification whose sid would be "check", and OPTIONS allows only what the document says."""
    assert api.get("/v1/verifications/check").status_code == 405
    allowed = client.options("/v1/verifications/check", headers=api.headers).headers["Allow"]
    assert {method.strip() for method in allowed.split(",")} == {"POST", "OPTIONS"}


def test_every_custom_format_is_explained_in_the_document(client):
    document = client.get("/v1/openapi.json").get_json()
    formats: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("format"), str):
                formats.add(node["format"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    custom = formats - {"date-time"}
    assert custom == {"phone", "country", "locale", "display-name"}
    for name in custom:
        assert f"`{name}`" in document["info"]["description"], name
