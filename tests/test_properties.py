"""Properties that hold for any input (hypothesis): phone input, Twilio's webhook forms, flow files.

Examples are bounded and derandomized, so a run is short and the same every time; no test
here depends on timing.
"""

from __future__ import annotations

import logging
import re
import string
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import yaml
from click.testing import CliRunner
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from ivr import phone
from ivr.cli import main
from ivr.config import DEFAULT_ALLOWED_COUNTRIES, DEFAULT_PROMPTS_DIR
from ivr.simulator import PhoneSimulator
from ivr.web.webhooks import _SignedParams, twilio_signature
from tests.conftest import API_TOKEN, AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL, Api, twilio_post

# A fixture's app serves every example of a test: its Redis state carries over, as a server's.
BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CALLER = "+14155550123"
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
DEFAULT_ALLOWED = frozenset(DEFAULT_ALLOWED_COUNTRIES.split(","))
KEYPAD = "0123456789*#"


# -- phone input ------------------------------------------------------------------------------

CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
SEPARATORS = " -.()/"
# Digits a phone number may be written with that are not ASCII: phonenumbers reads them.
OTHER_DIGITS = "٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹０１２３４５６７８９"
phone_like = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789+" + SEPARATORS, max_size=24),
    st.builds(
        lambda code, rest, plus: f"{plus}{code}{rest}",
        st.sampled_from(CALLING_CODES),
        st.text(alphabet="0123456789" + SEPARATORS, max_size=16),
        st.sampled_from(["+", "00", "\uff0b", " +", "+ ", ""]),  # \uff0b: a full-width plus
    ),
    st.builds(
        lambda code, rest: f"+{code}{rest}",
        st.sampled_from(CALLING_CODES),
        st.text(alphabet="0123456789" + OTHER_DIGITS, min_size=4, max_size=14),
    ),
)


def _example_numbers() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    """phonenumbers' example number of every region and kind: real shapes from everywhere,
    premium-rate, shared-cost and pager ranges included, and calling codes shared by regions
    (+1, +7, +44…)."""
    kinds = [
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.TOLL_FREE,
        phonenumbers.PhoneNumberType.PREMIUM_RATE,
        phonenumbers.PhoneNumberType.SHARED_COST,
        phonenumbers.PhoneNumberType.VOIP,
        phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
        phonenumbers.PhoneNumberType.PAGER,
        phonenumbers.PhoneNumberType.UAN,
        phonenumbers.PhoneNumberType.VOICEMAIL,
    ]
    found = []
    for region in REGIONS:
        for kind in kinds:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                found.append((region, number))
    return found


EXAMPLE_NUMBERS = _example_numbers()
FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.RFC3966,
]


@st.composite
def written_numbers(draw: st.DrawFn) -> tuple[str, str | None]:
    """A real number as someone would type it, with the country hint they might give (its
    own, another, or none), its last digit perhaps changed."""
    region, number = draw(st.sampled_from(EXAMPLE_NUMBERS))
    text = phonenumbers.format_number(number, draw(st.sampled_from(FORMATS)))
    if draw(st.booleans()):
        text = text[:-1] + draw(st.sampled_from("0123456789"))
    hint = draw(st.sampled_from([region, region.lower(), None, draw(st.sampled_from(REGIONS))]))
    return text, hint


hints = st.one_of(
    st.none(),
    st.sampled_from(REGIONS),
    st.sampled_from(REGIONS).map(str.lower),
    st.text(max_size=4),
)
non_text = st.one_of(
    st.none(), st.integers(), st.floats(), st.binary(max_size=12), st.lists(st.text())
)
allowed_sets = st.one_of(
    st.just(DEFAULT_ALLOWED),
    st.just(frozenset({"*"})),  # ALLOWED_COUNTRIES=*: any country
    st.sets(st.sampled_from(REGIONS), min_size=1, max_size=6).map(frozenset),
)
channels = st.sampled_from(["call", "sms", "flash_call", "missed_call"])


typed = st.one_of(
    written_numbers(), st.tuples(st.one_of(phone_like, non_text), st.one_of(hints, non_text))
)


@settings(BOUNDED, max_examples=150)
@given(typed=typed, channel=channels, data=st.data())
def test_no_input_becomes_a_number_outside_the_allowed_countries(typed, channel, data):
    """Whatever is typed, with whatever country hint, a number the policy lets through is
    valid E.164 in an allowed country, of a kind we call or text; anything else is the
    module's refusal, never another exception."""
    raw, hint = typed
    # The hint's country among the allowed ones now and then, so numbers do get through.
    near = {hint.upper()} if isinstance(hint, str) and hint.upper() in REGIONS else set()
    allowed = data.draw(st.one_of(allowed_sets, allowed_sets.map(near.union)), label="allowed")
    refusal: phone.NumberRefused | None = None
    try:
        number = phone.NumberPolicy(allowed).check(phone.parse(raw, hint), channel)
    except phone.NumberRefused as refused:
        refusal = refused
    if refusal is not None:
        assert refusal.reason and refusal.detail
        return
    assert "*" in allowed or number.country in allowed
    assert re.fullmatch(r"\+[1-9][0-9]{6,14}", number.e164), number.e164
    reparsed = phonenumbers.parse(number.e164, None)
    assert phonenumbers.is_valid_number(reparsed)
    assert phonenumbers.region_code_for_number(reparsed) == number.country
    assert number.number_type not in phone.REFUSED_TYPES


@BOUNDED
@given(raw=st.one_of(phone_like, non_text))
def test_a_caller_id_is_a_number_or_none_never_an_exception(raw):
    parsed = phone.parse_caller_id(raw)
    assert parsed is None or re.fullmatch(r"\+[1-9][0-9]{6,14}", parsed.e164)
    country = phone.country_of_caller(raw)
    assert country is None or country in phonenumbers.SUPPORTED_REGIONS


# -- Twilio's webhook forms -------------------------------------------------------------------

# What Twilio posts to a voice webhook (and a few names it never sends).
TWILIO_NAMES = [
    "CallSid",
    "AccountSid",
    "From",
    "To",
    "Caller",
    "Called",
    "CallStatus",
    "Direction",
    "Digits",
    "FinishedOnKey",
    "FromCountry",
    "ToCountry",
    "StirVerstat",
    "DialCallStatus",
    "DialCallDuration",
    "ErrorCode",
    "ApiVersion",
    "SpeechResult",
]
SEGMENT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
form_values = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.text(alphabet=KEYPAD, max_size=40),  # any Digits
    st.sampled_from([CALLER, CALLER_ID, "+14155550111", "anonymous", "client:agent", ""]),
    st.from_regex(r"\ACA[0-9a-f]{32}\Z"),
    st.sampled_from(["ringing", "in-progress", "completed", "busy", "no-answer", "failed"]),
    st.sampled_from(["TN-Validation-Passed-A", "TN-Validation-Failed", "No-TN-Validation"]),
)
forms = st.dictionaries(
    st.one_of(st.sampled_from(TWILIO_NAMES), st.text(SEGMENT, min_size=1, max_size=12)),
    form_values,
    max_size=8,
)


@pytest.fixture
def webhook_app(make_app: Callable[..., Flask]) -> tuple[Flask, list[str]]:
    """An app with every channel, a pending call verification, and a call in the IVR: the
    URLs Twilio would really be given are among those the examples post to."""
    app = make_app(
        missed_call_numbers="+14155550111",
        flash_call_accept_weak_odds=True,
        flash_call_numbers="+14155550121,+14155550122",
    )
    client = app.test_client()
    verification = Api(client, API_TOKEN).start(to=CALLER, channel="call").get_json()
    answered = twilio_post(
        client, "/voice/incoming", {"CallSid": "CA" + "1" * 32, "From": CALLER, "To": CALLER_ID}
    )
    actions = re.findall(r'action="([^"]+)"', answered.get_data(as_text=True))
    real = [
        f"/voice/code/{verification['sid']}/en-US/",
        f"/voice/code/{verification['sid']}/en-US/reveal",
        f"/voice/code/{verification['sid']}/en-US/reveal?repeat=1",
        *(action.replace("&amp;", "&").removeprefix(PUBLIC_BASE_URL) for action in actions),
    ]
    return app, real


def webhook_urls(real: list[str]) -> st.SearchStrategy[str]:
    segment = st.text(SEGMENT, min_size=1, max_size=40)
    sids = st.one_of(st.from_regex(r"\AVE[0-9a-f]{32}\Z"), segment)
    locales = st.one_of(st.sampled_from(["en-US", "es-ES", "de-DE", "xx-XX"]), segment)
    sealed = st.one_of(st.just(""), st.text(SEGMENT, max_size=80).map(lambda s: f"?s={s}"))
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(["/voice/incoming", "/voice/missed-call", "/voice/flash-call"]),
        st.builds("/voice/flow/{}{}".format, st.integers(0, 10**9), sealed),
        st.builds("/voice/flow/{}/dial{}".format, st.integers(0, 10**9), sealed),
        st.builds("/voice/code/{}/{}/".format, sids, locales),
        st.builds("/voice/code/{}/{}/reveal".format, sids, locales),
        st.builds("/voice/status/{}".format, sids),
    )


# Mostly Twilio's own signature, so most requests reach the route.
signatures = st.one_of(
    st.sampled_from(["valid", "valid", "valid", "", "another-token"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


@settings(BOUNDED, max_examples=100)
@given(data=st.data(), params=forms, signing=signatures)
def test_a_voice_webhook_answers_twiml_or_403_never_a_server_error(
    webhook_app, data, params, signing
):
    """Any Twilio-shaped form, any Digits, on any /voice/ route: a 403 exactly when the
    signature is wrong; otherwise TwiML that parses (a status callback: 204, nothing to say)."""
    app, real = webhook_app
    url = data.draw(webhook_urls(real), label="url")
    if signing == "valid":
        signature = None
    elif signing == "another-token":
        signature = RequestValidator("another-" + AUTH_TOKEN).compute_signature(
            PUBLIC_BASE_URL + url, params
        )
    else:
        signature = signing
    if signature is not None:
        right = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + url, params)
        assume(signature != right)
    response = twilio_post(app.test_client(), url, params, signature=signature)
    if signature is not None:
        assert response.status_code == 403, response.get_data(as_text=True)
        return
    if url.startswith("/voice/status/"):
        assert response.status_code == 204, response.get_data(as_text=True)
        return
    assert response.status_code == 200, (url, params, response.get_data(as_text=True))
    assert response.mimetype == "text/xml"
    root = ET.fromstring(response.get_data(as_text=True))
    assert root.tag == "Response"


# -- flow files -------------------------------------------------------------------------------


def _catalog_prompts() -> tuple[list[str], list[str]]:
    """Prompt keys every shipped catalog has, and the catalogs' locales."""
    catalogs = {
        path.stem: set(yaml.safe_load(path.read_text(encoding="utf-8"))["prompts"])
        for path in DEFAULT_PROMPTS_DIR.glob("*.yaml")
    }
    return sorted(set.intersection(*catalogs.values())), sorted(catalogs)


PROMPTS, LOCALES = _catalog_prompts()


def prompt_placeholders(key: str) -> set[str]:
    """The {placeholders} a prompt names in any shipped catalog."""
    names: set[str] = set()
    for path in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        text = yaml.safe_load(path.read_text(encoding="utf-8"))["prompts"].get(key, "")
        names |= {name for _, name, _, _ in string.Formatter().parse(text) if name}
    return names


# What any node may say: flow prompts naming no {placeholder} but the app's name (an
# authenticate node's "code sent" prompts name {ending}, which only it fills).
FLOW_PROMPTS = [
    key for key in PROMPTS if key.startswith("flow.") and prompt_placeholders(key) <= {"app_name"}
]
prompt_keys = st.sampled_from(FLOW_PROMPTS)
keypad_keys = st.sampled_from(list(KEYPAD))
# Kinds a flow passes through; "identify" stands for identify then authenticate (the code goes
# to a customer found, so nothing else may lead to an authenticate node).
PASSING = ["say", "menu", "collect", "language", "hours", "identify", "goto"]
ENDING = ["hangup", "agent_queue", "agent_dial", "transfer"]


@st.composite
def weekly_schedules(draw: st.DrawFn) -> dict[str, list[str]]:
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    schedule: dict[str, list[str]] = {}
    for _ in range(draw(st.integers(0, 3))):
        first = draw(st.sampled_from(days))
        spec = draw(st.sampled_from([first, f"{first}-{draw(st.sampled_from(days))}"]))
        opens = draw(st.integers(0, 22))
        closes = draw(st.integers(opens + 1, 24))
        schedule[spec] = [f"{opens:02d}:00-{closes:02d}:00"]
    return schedule


@st.composite
def valid_flows(draw: st.DrawFn) -> dict[str, Any]:
    """A flow `ivr flows check` passes: nodes in a row, each going on to the next (and its
    other branches to any later node that is no authenticate), ending in a node that ends."""
    kinds: list[str] = []
    for kind in draw(st.lists(st.sampled_from(PASSING), min_size=0, max_size=5)):
        kinds += ["identify", "authenticate"] if kind == "identify" else [kind]
    kinds.append(draw(st.sampled_from(ENDING)))
    ids = [f"n{index}_{kind}" for index, kind in enumerate(kinds)]
    nodes: dict[str, dict[str, Any]] = {}
    for index, (node_id, kind) in enumerate(zip(ids, kinds, strict=True)):
        following = ids[index + 1 :]
        onward = [n for n in following if not n.endswith("_authenticate")]
        next_id = following[0] if following else None

        def later(pool: list[str] = onward) -> str:
            return draw(st.sampled_from(pool))

        tries = st.integers(1, 3)
        if kind == "say":
            node = {
                "type": draw(st.sampled_from(["say", "play"])),
                "next": next_id,
                "prompt": draw(st.lists(prompt_keys, min_size=1, max_size=3)),
            }
        elif kind == "menu":
            keys = draw(st.lists(keypad_keys, min_size=1, max_size=4, unique=True))
            node = {
                "type": "menu",
                "greeting": draw(prompt_keys),
                "options": {key: (next_id if i == 0 else later()) for i, key in enumerate(keys)},
                "max_failures": draw(tries),
                "max_timeouts": draw(tries),
                "exit": later(),
            }
            if draw(st.booleans()):
                node["short_greeting"] = draw(prompt_keys)
        elif kind == "collect":
            low = draw(st.integers(1, 6))
            node = {
                "type": "collect",
                "prompt": draw(prompt_keys),
                "store_as": f"v{index}",
                "min_digits": low,
                "max_digits": draw(st.integers(low, 8)),
                "finish_on_key": draw(st.sampled_from(["#", "*", ""])),
                "tries": draw(tries),
                "next": next_id,
                "on_failure": later(),
            }
            pattern = draw(st.sampled_from([None, "[0-9]+", "[0-9]{4}", "1.*"]))
            if pattern:
                node["pattern"] = pattern
        elif kind == "language":
            keys = draw(st.lists(keypad_keys, min_size=1, max_size=3, unique=True))
            node = {
                "type": "language",
                "options": {key: draw(st.sampled_from(LOCALES)) for key in keys},
                "tries": draw(st.integers(1, 2)),
                "next": next_id,
            }
        elif kind == "hours":
            node = {
                "type": "hours",
                "timezone": draw(st.sampled_from(["America/New_York", "Europe/Madrid", "UTC"])),
                "weekly": draw(weekly_schedules()),
                "open": next_id,
                "closed": later(),
            }
        elif kind == "identify":
            node = {
                "type": "identify",
                "use_caller_id": draw(st.booleans()),
                "tries": draw(tries),
                "found": next_id,
                "not_found": later(),
            }
        elif kind == "authenticate":
            node = {
                "type": "authenticate",
                "channel": draw(st.sampled_from(["auto", "sms"])),
                "tries": draw(tries),
                "success": next_id,
                "failure": later(),
            }
        elif kind == "goto":
            node = {"type": "goto", "target": next_id}
        elif kind == "hangup":
            node = {"type": "hangup", "prompt": draw(st.sampled_from([None, "flow.goodbye"]))}
        elif kind == "agent_queue":
            node = {"type": "agent", "queue": "support", "attributes": {"skill": "accounts"}}
        elif kind == "agent_dial":
            target = draw(
                st.sampled_from(
                    [
                        {"number": "+18005550199"},
                        {"sip": "sip:desk@example.com"},
                        {"client": "agent_1"},
                    ]
                )
            )
            node = {"type": "agent", "dial": target}
        else:
            node = {"type": "transfer", "to_number": "+18005550199"}
        nodes[node_id] = {key: value for key, value in node.items() if value is not None}
    return {
        "name": "default",
        "default": True,
        "start": ids[0],
        "on_error": ids[-1],
        "nodes": nodes,
    }


def flow_text(flow: dict[str, Any]) -> str:
    return yaml.safe_dump(flow, sort_keys=False, allow_unicode=True)


def check(folder: Path) -> Any:
    """`ivr flows check` on the folder, as a team runs it."""
    return CliRunner().invoke(main, ["flows", "check", str(folder)])


@pytest.fixture
def flow_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    return folder


@pytest.fixture
def flow_app(make_app: Callable[..., Flask], flow_folder: Path) -> Flask:
    """An app serving the folder, with the caller on file (so identify finds them and
    authenticate sends a code)."""
    (flow_folder / "default.yaml").write_text(
        "default: true\nstart: bye\nnodes:\n  bye: {type: hangup}\n", encoding="utf-8"
    )
    app = make_app(flows_dir=str(flow_folder))
    customer = {"phone": CALLER, "name": "Ann Lee", "sms": True}
    assert Api(app.test_client()).put("/v1/customers/12345678", customer).status_code == 201
    return app


@settings(BOUNDED, max_examples=40)
@given(flow=valid_flows(), keys=st.lists(st.text(KEYPAD, min_size=1, max_size=8), max_size=8))
def test_a_valid_flow_passes_check_and_any_caller_gets_through_it(
    flow_app, flow_folder, caplog, flow, keys
):
    """A flow `ivr flows check` passes is served, and a caller pressing any keys (or none)
    goes through it to its end: no turn fails, nothing is logged as an error."""
    (flow_folder / "default.yaml").write_text(flow_text(flow), encoding="utf-8")
    result = check(flow_folder)
    assert result.exit_code == 0, result.output
    assert " 0 error(s)" in result.output
    flow_app.extensions["ivr"].flows.library.refresh(force=True)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        transcript = PhoneSimulator(flow_app, AUTH_TOKEN).call(
            f"{PUBLIC_BASE_URL}/voice/incoming", from_=CALLER, to=CALLER_ID, keys=keys
        )
    assert transcript.ended_by != "error", transcript.to_dict()
    assert not [event for event in transcript.events if event.kind == "error"], transcript.to_dict()
    assert not caplog.records, [record.getMessage() for record in caplog.records]


# Mistakes a team makes, each on a line of its own: (the line, whether it replaces the node's
# first setting, its type, or comes before it).
BREAKAGES = {
    "unknown setting": ("    colour: blue", False),
    "unknown node type": ("    type: sey", True),
    "not a number": ("    timeout_seconds: soon", False),
    "YAML syntax": ("    description: [a note", False),
    "tab": ("\tdescription: a note", False),
}


@settings(BOUNDED, max_examples=25)
@given(flow=valid_flows(), breakage=st.sampled_from(sorted(BREAKAGES)), data=st.data())
def test_an_invalid_flow_is_refused_at_the_line_of_the_mistake(flow_folder, flow, breakage, data):
    """A mistake in any node of any flow is an error of `ivr flows check` at its line."""
    lines = flow_text(flow).splitlines()
    node_id = data.draw(st.sampled_from(sorted(flow["nodes"])), label="node")
    at = lines.index(f"  {node_id}:") + 1  # the node's first setting: its type
    broken, replaces = BREAKAGES[breakage]
    assert lines[at].startswith("    type: ")
    if replaces:
        lines[at] = broken
    else:
        lines.insert(at, broken)
    path = flow_folder / "default.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = check(flow_folder)
    assert result.exit_code == 1, result.output
    reported = [
        int(match.group(1))
        for match in re.finditer(
            rf"^{re.escape(str(path))}:(\d+)(?::\d+)?: error: ", result.output, re.M
        )
    ]
    assert reported, result.output
    assert at + 1 in reported, (breakage, at + 1, result.output)


@settings(max_examples=300, deadline=None)
@given(
    url=st.text(min_size=1, max_size=80),
    pairs=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=30),
    token=st.text(min_size=1, max_size=40),
)
def test_our_signature_is_twilios_for_any_form(url, pairs, token):
    """The webhooks' one-HMAC signature (ivr.web.webhooks.twilio_signature) is exactly what
    twilio's RequestValidator computes, names or values given twice, any text included."""
    form = MultiDict(pairs)
    expected = RequestValidator(token).compute_signature(url, _SignedParams(form))
    assert twilio_signature(token, url, list(form.items(multi=True))).decode() == expected
