"""Calls: who is in the IVR now and who was lately, and each call's journey (every node it
passed, the keys pressed with codes masked, what was said, codes sent and checked, where it
ended), to answer "why did this caller fail?"."""

from __future__ import annotations

from typing import Any

from flask import abort, render_template

from ivr import phone
from ivr.app import services
from ivr.flows.state import CallState
from ivr.users import Role
from ivr.verification.models import is_call_sid
from ivr.web.console import access, blueprint


def _row(call_sid: str, state: CallState | None, started: int) -> dict[str, Any]:
    if state is None:
        return {"call_sid": call_sid, "started": started, "expired": True, "ended": True}
    last = state.updated_at or started
    return {
        "call_sid": call_sid,
        "started": state.started_at or started,
        "caller": phone.masked(state.caller) if state.caller.startswith("+") else "withheld",
        "flow": state.flow,
        "revision": state.flow_revision or "live",
        "node": state.node,
        "seconds": max(0, (last - (state.started_at or started)) // 1000),
        "customer": state.customer_id,
        "verified": state.verified,
        "outcome": state.outcome or "in the IVR",
        "simulated": state.simulated,
        "expired": False,
        "ended": state.outcome is not None,  # its journey page stops refreshing
    }


@blueprint.get("/calls")
@access.requires(Role.VIEWER)
def calls() -> str:
    recent = services().flows.states.recent(limit=200)
    return render_template("console/calls.html", rows=[_row(*entry) for entry in recent])


@blueprint.get("/calls/<call_sid>")
@access.requires(Role.VIEWER)
def call_journey(call_sid: str) -> str:
    if not is_call_sid(call_sid):
        abort(404, description="not a CallSid")
    states = services().flows.states
    state = states.load(call_sid)
    journey = states.journey(call_sid)
    if state is None and not journey:
        abort(404, description="no IVR call with this CallSid (or it was too long ago)")
    prompts = services().prompts
    locale = state.locale if state else prompts.default_locale

    def said(key: str) -> str:
        try:
            return prompts.text(
                locale, key, app_name=services().settings.app_name, ending="…", digit="…"
            )
        except (KeyError, IndexError, ValueError):
            return key

    return render_template(
        "console/call.html",
        call_sid=call_sid,
        row=_row(call_sid, state, journey[0]["at"] if journey else 0),
        journey=journey,
        said=said,
    )
