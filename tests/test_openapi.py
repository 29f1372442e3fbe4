"""The OpenAPI document describes exactly the API the app serves."""

from __future__ import annotations

import re

import jsonschema


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
        if not rule.rule.startswith(("/v1/", "/healthz")) or rule.rule == "/v1/openapi.json":
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


def test_the_check_endpoint_is_no_verification_to_get(client, api):
    """`/v1/verifications/check` is the check's: a GET there is a 405, not a lookup of a
    verification whose sid would be "check", and OPTIONS allows only what the document says."""
    assert api.get("/v1/verifications/check").status_code == 405
    allowed = client.options("/v1/verifications/check", headers=api.headers).headers["Allow"]
    assert {method.strip() for method in allowed.split(",")} == {"POST", "OPTIONS"}
