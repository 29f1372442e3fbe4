"""The simulator: a phone keypad in the page that calls a flow (live or draft) through the same
signed webhooks Twilio calls, one key press at a time.

A simulated call's first URL carries a sealed token (only we can make one), so the engine runs
the chosen flow version and sends every code to the simulated carrier, never a real phone,
whatever carrier is configured. The simulated phone beside the keypad shows what the caller's
phone (or the customer's phone on file) received.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from flask import abort, current_app, render_template, request

from ivr import keys, phone
from ivr.app import services
from ivr.flows.library import PublishedFlows
from ivr.simulator import Progress, Question
from ivr.telephony import SimulatedCarrier
from ivr.users import Role
from ivr.verification.models import is_call_sid
from ivr.web.bodies import BodyRefused, json_object
from ivr.web.console import access, blueprint
from ivr.web.webhooks import SIMULATOR_PARAMETER

SIMULATED_CALL_TTL_SECONDS = 2 * 3600
VERSIONS = ("live", "draft")
DTMF_KEYS = frozenset("0123456789*#")
_MAX_KEYS = 32


def _simulated_phone() -> Any:
    """A PhoneSimulator signing as Twilio does (the webhooks cannot tell it from Twilio)."""
    from ivr.simulator import PhoneSimulator

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return PhoneSimulator(app, services().secrets.webhook_auth_token)


def _carrier() -> SimulatedCarrier:
    carrier = services().verifications.simulated_carrier
    assert isinstance(carrier, SimulatedCarrier)  # the factory always makes one
    return carrier


def _prompt_drafts() -> dict[str, str]:
    """Locale -> the text of its prompt draft, for every locale that has one."""
    published = services().prompts.published
    if published is None:
        return {}
    return {locale: draft.text for locale, draft in published.drafts().items()}


@blueprint.get("/simulator")
@access.requires(Role.VIEWER)
def simulator() -> str:
    library = services().flows.library
    flows = sorted(library.flows)
    drafts = sorted(library.versions.drafts()) if isinstance(library, PublishedFlows) else []
    prompt_drafts = _prompt_drafts()
    if prompt_drafts:  # every flow can be tried with the prompt drafts
        drafts = sorted({*drafts, *flows})
    customers = services().customers.search("", limit=200)
    return render_template(
        "console/simulator.html",
        flows=flows,
        drafts=drafts,
        prompt_drafts=sorted(prompt_drafts),
        customers=customers,
        chosen=request.args.get("flow", "default"),
    )


def _save(call_sid: str, record: dict[str, Any]) -> None:
    services().redis.set(
        keys.simulator_call(call_sid), json.dumps(record), ex=SIMULATED_CALL_TTL_SECONDS
    )


def _json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object, or a 4xx that says what is wrong with it (an
    `optional` body may also be empty)."""
    if optional and not request.get_data(cache=True):  # too big: 413 (the app's limit)
        return {}
    if not request.is_json:
        abort(415, description="send a JSON object with Content-Type: application/json")
    try:  # too big: 413 before parsing
        return json_object(request.get_data(cache=True))
    except BodyRefused as exc:  # not JSON, nested past the parser's depth, a key twice…
        abort(400, description=exc.detail)


MAX_FIELD_CHARS = 100  # a flow's name; longer is garbage, not echoed back in the error


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_CHARS:
        abort(400, description=f"{name}: a string of 1 to {MAX_FIELD_CHARS} characters")
    return value


def _load(call_sid: str) -> dict[str, Any]:
    if not is_call_sid(call_sid):
        abort(404, description="no such simulated call")
    raw = services().redis.get(keys.simulator_call(call_sid))
    record = json.loads(raw) if raw else None
    if record is None or record["owner"] != access.current_session().user:
        abort(404, description="no such simulated call (it may have ended)")
    return record


def _answer(call_sid: str, record: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The page's view of the call after a step, saved for the next one."""
    record["question"] = progress.question.to_dict() if progress.question else None
    record["ended_by"] = progress.ended_by
    _save(call_sid, record)
    state = services().flows.states.load(call_sid)
    return {
        "call_sid": call_sid,
        "events": [event.to_dict() for event in progress.events],
        "waiting": (
            {"finish_on_key": progress.question.finish_on_key} if progress.question else None
        ),
        "ended_by": progress.ended_by,
        "node": state.node if state else None,
        "verified": state.verified if state else False,
        "customer_id": state.customer_id if state else None,
    }


@blueprint.post("/simulator/calls")
@access.requires(Role.VIEWER)
@access.answers_json
def simulator_call() -> Any:
    """Place a simulated call: {flow, version: "live" (the default) | "draft", caller}."""
    data = _json_object()
    flow_name = _text(data, "flow")
    version = data.get("version", "live")
    if version not in VERSIONS:
        abort(400, description='version: "live" or "draft"')
    # Every field is checked before anything is written (a draft's trial, the call).
    try:
        caller = phone.parse(data.get("caller"), None).e164
    except phone.NumberRefused as exc:
        abort(400, description=f"caller: {exc.detail}")
    library = services().flows.library
    if not isinstance(library, PublishedFlows):
        abort(503, description="flows are served from files only (no Redis)")
    if flow_name not in library.flows and library.versions.draft(flow_name) is None:
        abort(404, description=f"no flow {flow_name!r}")
    # "live": the version live now, read from Redis (a worker that has not looked yet would
    # start it on the one before). "draft": the flow's draft if it has one, and the prompt
    # drafts if there are any, frozen for the call.
    live = library.versions.live_number(flow_name)
    revision, prompts = (str(live) if live else ""), ""
    if version == "draft":
        draft = library.versions.draft(flow_name)
        prompt_drafts = _prompt_drafts()
        if draft is None and not prompt_drafts:
            abort(404, description=f"flow {flow_name!r} has no draft, nor do the prompts")
        if draft is not None:
            loaded, problems = library.check(flow_name, draft.text)
            if loaded is None:
                errors = "; ".join(p.message for p in problems if p.severity == "error")
                abort(422, description=f"the draft does not pass the checks: {errors}")
            revision = "trial:" + library.versions.save_trial(draft.text)
        if prompt_drafts:
            frozen = json.dumps(prompt_drafts, sort_keys=True, separators=(",", ":"))
            prompts = "trial:" + services().prompts.published.save_trial(frozen)
    served = library.served(flow_name, revision)
    if served is None:
        abort(404, description=f"no flow {flow_name!r}")
    called = served.flow.numbers[0] if served.flow.numbers else services().verifications.caller_id
    call_sid = "CA" + secrets.token_hex(16)
    token = services().flows.states.seal_trial(call_sid, flow_name, revision, prompts)
    params = {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": caller,
        "To": called,
        "Direction": "inbound",
        "CallStatus": "in-progress",
    }
    record = {"owner": access.current_session().user, "params": params, "caller": caller}
    url = f"{services().base_url}/voice/incoming?{SIMULATOR_PARAMETER}={token}"
    progress = _simulated_phone().begin(url, params)
    return _answer(call_sid, record, progress), 201


@blueprint.post("/simulator/calls/<call_sid>/keys")
@access.requires(Role.VIEWER)
@access.answers_json
def simulator_keys(call_sid: str) -> Any:
    """The caller pressed {keys} (or, with keys null, stayed silent until the timeout)."""
    record = _load(call_sid)
    data = _json_object()
    if "keys" not in data:
        abort(400, description="keys: the keys pressed, or null for silence")
    pressed = data["keys"]
    if pressed is not None and (
        not isinstance(pressed, str)
        or not 1 <= len(pressed) <= _MAX_KEYS
        or not DTMF_KEYS.issuperset(pressed)
    ):
        abort(400, description=f"keys: 1 to {_MAX_KEYS} of 0-9, * and #, or null for silence")
    question = record.get("question")
    if question is None:
        abort(409, description="the call is not waiting for keys")
    progress = _simulated_phone().press(Question(**question), record["params"], pressed)
    return _answer(call_sid, record, progress)


@blueprint.post("/simulator/calls/<call_sid>/hangup")
@access.requires(Role.VIEWER)
@access.answers_json
def simulator_hangup(call_sid: str) -> Any:
    """The caller hung up (the body, if any, is an empty JSON object). A call that already
    ended keeps the way it ended: hanging up again changes nothing."""
    record = _load(call_sid)
    _json_object(optional=True)
    if record.get("ended_by"):
        return {"call_sid": call_sid, "ended_by": record["ended_by"], "events": []}
    record["question"], record["ended_by"] = None, "caller hung up"
    _save(call_sid, record)
    return {"call_sid": call_sid, "ended_by": "caller hung up", "events": []}


@blueprint.get("/simulator/calls/<call_sid>/phone")
@access.requires(Role.VIEWER)
@access.answers_json
def simulator_phone(call_sid: str) -> Any:
    """What the simulated phone(s) of this call received: the caller's, and the customer's
    phone on file once the caller is identified."""
    record = _load(call_sid)
    state = services().flows.states.load(call_sid)
    numbers = {record["caller"]}
    if state is not None and state.customer_phone:
        numbers.add(state.customer_phone)
    messages = [
        {
            "kind": entry["kind"],
            "to": phone.masked(entry["to"]),
            "body": entry.get("body"),
            "sid": entry["sid"],
            "at": entry.get("created_at"),
        }
        for entry in _carrier().outbox(limit=50)
        if entry["to"] in numbers and entry.get("created_at", 0) >= _started_ms(state)
    ]
    return {"messages": messages}


def _started_ms(state: Any) -> int:
    return int(state.started_at) if state is not None and state.started_at else 0
