"""Check a /v2 response body against our Twilio Verify v2 schema (tests/verify_v2_schema.json).

Provenance: the schema was written for this project from Twilio's public Verify v2 API reference
(https://www.twilio.com/docs/verify/api) and the twilio/twilio-oai spec
spec/json/twilio_verify_v2.json at commit d50069b (2026-04-14), read on 2026-12-04. It copies
neither. Where it is stricter than the OAI, and why, is in the JSON's top-level description.

No FormatChecker: jsonschema checks the "date-time" and "uri" formats only when extra packages
(rfc3339-validator, rfc3987) are installed, and they aren't. So the schema checks dates and URLs
with patterns. A few rules span two fields, which JSON Schema cannot say, and are checked below:
a url names the resource's own sids, and a Twilio more_info names the body's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from referencing import Registry, Resource

SCHEMA: dict[str, Any] = json.loads(
    Path(__file__).with_name("verify_v2_schema.json").read_text(encoding="utf-8")
)
Draft202012Validator.check_schema(SCHEMA)
KINDS = ("service", "service_page", "verification", "verification_check", "error")
_REGISTRY = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))
# JSON Schema counts 6.0 as an integer; the wire would show "6.0", which Twilio never sends.
_Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)
_VALIDATORS = {
    kind: _Validator({"$ref": f"{SCHEMA['$id']}#/$defs/{kind}"}, registry=_REGISTRY)
    for kind in KINDS
}
TWILIO_ERROR_DOCS = "https://www.twilio.com/docs/errors/"


def assert_matches(kind: str, body: dict) -> None:
    """Raise AssertionError listing every place `body` differs from the `kind` schema."""
    if kind not in _VALIDATORS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    problems = []
    for error in sorted(_VALIDATORS[kind].iter_errors(body), key=lambda e: list(map(str, e.path))):
        problems.append(f"{error.json_path}: {error.message}")
        problems += [f"    {sub.json_path}: {sub.message}" for sub in error.context or ()]
    if not problems:  # the cross-field rules assume the shape is right
        problems = _cross_field_problems(kind, body)
    if problems:
        raise AssertionError(
            f"not a Twilio Verify v2 {kind}:\n  " + "\n  ".join(problems) + f"\nbody: {body!r}"
        )


def _cross_field_problems(kind: str, body: dict, at: str = "$") -> list[str]:
    if kind == "service_page":
        return [
            problem
            for index, service in enumerate(body["services"])
            for problem in _cross_field_problems("service", service, f"$.services[{index}]")
        ]
    problems = []
    if kind == "service":
        if not body["url"].endswith(f"/v2/Services/{body['sid']}"):
            problems.append(f"{at}.url: {body['url']!r} does not name sid {body['sid']}")
        problems += [
            f"{at}.links.{name}: {link!r} is not under url {body['url']!r}"
            for name, link in body["links"].items()
            if not link.startswith(body["url"] + "/")
        ]
    elif kind == "verification":
        path = f"/v2/Services/{body['service_sid']}/Verifications/{body['sid']}"
        if not body["url"].endswith(path):
            problems.append(f"{at}.url: {body['url']!r} does not end in {path}")
    elif kind == "error":
        more_info = body["more_info"]
        if more_info.startswith(TWILIO_ERROR_DOCS) and more_info != TWILIO_ERROR_DOCS + str(
            body["code"]
        ):
            problems.append(f"{at}.more_info: {more_info!r} is not code {body['code']}'s")
    return problems
