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
