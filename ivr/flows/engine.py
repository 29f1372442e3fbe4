"""The flow engine: a call's state and the caller's keys in, the next TwiML document out.

One webhook = one turn. The engine applies the caller's input to the node the call waits on,
then walks on through nodes that need no input (say, goto, hours…) collecting their prompts,
until a node waits for keys (its <Gather> carries the prompts collected so far, so a caller who
knows the flow can type ahead) or hands the call over (agent, transfer, hangup).

No Flask here: the web edge turns a request into `CallInfo` and the document into a response.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from twilio.twiml.voice_response import Dial, Enqueue, Gather, VoiceResponse

from ivr import phone
from ivr.customers import Customer, CustomerFinder
from ivr.flows import model
from ivr.flows.hours import is_open
from ivr.flows.library import PublishedFlows
from ivr.flows.loader import FlowLibrary, LoadedFlow
from ivr.flows.state import CallState, CallStateStore
from ivr.metrics import call_outcome, metrics
from ivr.prompts import CatalogError, PromptCatalogs
from ivr.twiml import LinkedResponse
from ivr.verification.models import Status
from ivr.verification.service import (
    DeliveryFailed,
    InvalidRequest,
    NotFound,
    NotPending,
    RateLimited,
    VerificationService,
)

log = logging.getLogger(__name__)

MAX_HOPS = 32  # nodes walked in one turn before the engine gives up (lint catches the loops)


class _Stay:
    """A handler's answer: ask the same node again, keeping its counters."""


STAY = _Stay()
Going = str | _Stay | None  # a node id, STAY, or None: the turn's document is complete


class FlowUrls(Protocol):
    def flow_step(self, step: int, sealed: str | None) -> str: ...
    def flow_dial_result(self, step: int, sealed: str | None) -> str: ...


@dataclass(frozen=True)
class Trial:
    """A call placed by the console's simulator: the flow and version it tries."""

    flow: str
    revision: str = ""  # "" the live version, "7", or "trial:<digest>" (a draft)
    prompts: str = ""  # "" the live prompts, or "trial:<digest>": the prompt drafts too


@dataclass(frozen=True)
class CallInfo:
    """What Twilio told us about the call, already bounded in size by the web edge."""

    call_sid: str
    caller: str  # From
    called: str  # To
    caller_country: str | None = None
    trial: Trial | None = None  # set only for the simulator's calls (a sealed URL says so)


@dataclass
class _Turn:
    """One webhook's work: the prompts collected so far and the document being built."""

    flow: model.Flow
    state: CallState
    next_step: int  # the step the caller's answer to this turn will carry
    call_sid: str = ""
    stateless: bool = False  # nothing of this turn is saved: offer no way back into it
    unconfirmed: bool = False  # the state came from the URL: not yet known to be current
    prompts: PromptCatalogs | None = None  # what this call hears (the drafts, in a trial)
    response: LinkedResponse = field(default_factory=LinkedResponse)
    pending: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    # Verbs whose action URL leads back into the flow: filled in once the turn's state is final.
    links: list[tuple[Any, Callable[[int, str | None], str]]] = field(default_factory=list)
    # The journey's record of this turn: the keys (masked), nodes entered, prompts, effects.
    keys: str | None = None
    entered: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    effects: list[dict[str, Any]] = field(default_factory=list)
    # How the call's flow part had ended before this turn (a dial that came back to the
    # flow): the turn's own outcome is counted only if it is a new one.
    outcome_before: str = field(init=False, default="")
    # A new call's first turn: a language node asks on the bet that the caller is not on file
    # (`bet_on` is then that node), the lookup made in the round trip that saves the call.
    betting: bool = False
    bet_on: model.LanguageNode | None = None
    known_locale: str | None = None  # the turn again, once the caller's record said it
    read_back: str | None = None  # the value `_commit(read=…)` read

    def __post_init__(self) -> None:
        self.outcome_before = self.state.outcome

    def say(self, key: str | None, **values: object) -> None:
        if key:
            self.pending.append((key, values))
            self.said.append(key)

    def effect(self, kind: str, **details: Any) -> None:
        self.effects.append({"kind": kind, **details})

    def record(self, at: int) -> dict[str, Any]:
        """This turn for the call's journey (never a code: keys of a code are masked)."""
        entry: dict[str, Any] = {"at": at, "step": self.next_step - 1, "nodes": self.entered}
        if self.keys is not None:
            entry["keys"] = self.keys
        if self.said:
            entry["prompts"] = self.said
        if self.effects:
            entry["effects"] = self.effects
        if self.state.outcome:
            entry["outcome"] = self.state.outcome
        return entry

    def link(self, verb: Any, url: Callable[[int, str | None], str]) -> None:
        self.links.append((verb, url))
        self.response.links.append(verb)

    def fill_links(self, sealed: str | None) -> None:
        for verb, url in self.links:
            verb.attrs["action"] = url(self.next_step, sealed)


class FlowError(Exception):
    """The flow cannot go on (a node vanished in an edit, a loop): the call takes on_error."""


class _Stale(Exception):
    """The state a turn opened from its URL is no longer the call's current one (a replay)."""


# Twilio refuses a <Sip> URI whose headers part is longer (error 21227).
SIP_HEADERS_MAX_CHARS = 1024


def sip_headers(values: dict[str, str]) -> tuple[str, list[str]]:
    """The X-IVR-<name>=<value> headers of a <Sip> URI, within Twilio's limit: the longest
    values are shortened (never dropped) until they fit; also the names shortened."""
    values = dict(values)
    shortened: list[str] = []

    def joined() -> str:
        return "&".join(
            f"X-IVR-{name.replace('_', '-')}={quote(value, safe='')}"
            for name, value in values.items()
        )

    headers = joined()
    while len(headers) > SIP_HEADERS_MAX_CHARS:
        longest = max(values, key=lambda name: len(quote(values[name], safe="")))
        if not values[longest]:
            break  # only names left: the model bounds them, this cannot be reached
        values[longest] = values[longest][: len(values[longest]) // 2]
        if longest not in shortened:
            shortened.append(longest)
        headers = joined()
    return headers, shortened


class FlowEngine:
    """Runs calls through the flows of a FlowLibrary."""

    def __init__(
        self,
        *,
        library: FlowLibrary | PublishedFlows,
        prompts: PromptCatalogs,
        states: CallStateStore,
        verifications: VerificationService,
        customers: CustomerFinder | None,
        urls: FlowUrls,
        app_name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.library = library
        self.prompts = prompts
        self._trial_prompts: dict[tuple[str, int], PromptCatalogs] = {}
        self.states = states
        self.verifications = verifications
        self.customers = customers
        self.urls = urls
        self.app_name = app_name
        self.clock = clock

    # -- the two ways a turn starts ------------------------------------------------------------

    def answer(self, call: CallInfo) -> VoiceResponse:
        """A new call: pick the flow by the called number, start it. One Redis round trip for
        a caller not on file: the state is created only if the call has none (if Twilio asks
        again for a call already answered, the save fails and the current question is
        repeated), and a language question first asked on the bet that the caller is not on
        file reads their phone's index entry in the same round trip. A caller on file with a
        language of their own then has the turn done again in it, saved over the first."""
        served = self._served_for(call)
        if served is None:
            log.error("call %s: no flow answers %s", call.call_sid, phone.masked(call.called))
            if call.trial is None:
                metrics().ivr_calls.labels("(none)", "error").inc()
            return self._goodbye(self.prompts.default_locale, "call.error")
        turn = self._first_turn(call, served)
        turn.betting = True
        try:
            self._walk(turn, STAY)
        except FlowError as exc:
            return self._on_error(served.flow, turn.state, str(exc))
        bet_on, caller = turn.bet_on, turn.state.caller
        read = self.customers.directory.phone_entry(caller) if bet_on and self.customers else None
        if not self._commit(turn, read=read):
            return self._repeat_current(call.call_sid, self.states.load(call.call_sid))
        if bet_on is None or self.customers is None:
            return turn.response
        known = self._offered_locale(self.customers.by_phone_entry(caller, turn.read_back), bet_on)
        if known is None:
            return turn.response
        again = self._first_turn(call, served)
        again.known_locale = known
        again.state.version, again.state.started_at = turn.state.version, turn.state.started_at
        try:
            self._walk(again, STAY)
        except FlowError as exc:
            return self._on_error(served.flow, again.state, str(exc))
        if not self._commit(again, replacing_turn=True):
            return self._repeat_current(call.call_sid, self.states.load(call.call_sid))
        return again.response

    def _first_turn(self, call: CallInfo, served: LoadedFlow) -> _Turn:
        flow = served.flow
        state = CallState(
            flow=flow.name,
            node=flow.start,
            locale=flow.locale or self.prompts.resolve_locale(None, call.caller_country),
            caller=call.caller,
            flow_revision=served.revision,
            prompts_revision=call.trial.prompts if call.trial else "",
            simulated=call.trial is not None,
        )
        return _Turn(flow, state, 1, call.call_sid, prompts=self._prompts_of(state))

    def step(
        self,
        call: CallInfo,
        step: int,
        digits: str | None,
        dial_status: str | None = None,
        sealed: str | None = None,
    ) -> VoiceResponse:
        """The caller's answer to the question asked at `step` (digits, or None on silence).
        `sealed`: the state that question was asked from, as its URL carried it; it spares
        reading Redis before the save (which still checks it is current)."""
        state = self.states.unseal(call.call_sid, sealed) if sealed else None
        if state is None or state.step != step:
            state = self.states.load(call.call_sid)
            if state is None:  # expired, or never ours: the flow's on_error takes the call
                log.warning("call %s: step %s for a call with no state", call.call_sid, step)
                return self.fallback(call)
            if state.step != step:
                log.info("call %s: step %s replayed (now at %s)", call.call_sid, step, state.step)
                return self._repeat_current(call.call_sid, state)
            unconfirmed = False
        else:
            unconfirmed = True
        flow = self._flow_of(state)
        if flow is None or state.node not in flow.nodes:
            return self._on_error(flow, state, "the call's flow or node is gone")
        turn = _Turn(
            flow,
            state,
            next_step=step + 1,
            call_sid=call.call_sid,
            unconfirmed=unconfirmed,
            prompts=self._prompts_of(state),
        )
        try:
            node = flow.nodes[state.node]
            turn.keys = _journey_keys(node, digits, dial_status)
            turn.entered.append(state.node)
            answer = getattr(self, f"_input_{node.type}", None)
            going = answer(turn, node, digits, dial_status) if answer else STAY
            self._walk(turn, going)
            saved = self._commit(turn)
        except FlowError as exc:
            return self._on_error(turn.flow, state, str(exc))
        except _Stale:
            saved = False
        if not saved:
            log.info("call %s: step %s was replayed or raced; repeating", call.call_sid, step)
            return self._repeat_current(call.call_sid, self.states.load(call.call_sid))
        return turn.response

    def _served_for(self, call: CallInfo) -> LoadedFlow | None:
        """The flow a new call runs: the simulator's pick, else the one answering the number."""
        if call.trial is not None:
            return self.library.served(call.trial.flow, call.trial.revision)
        return self.library.served_for_number(call.called)

    def _prompts_of(self, state: CallState) -> PromptCatalogs:
        """What the call hears: the live prompts, or for a simulator's trial of the drafts,
        the prompt drafts frozen when it started (the live ones once the trial expired)."""
        revision = state.prompts_revision
        if not revision or self.prompts.published is None:
            return self.prompts
        key = (revision, self.prompts.version)
        found = self._trial_prompts.get(key)
        if found is None:
            text = self.prompts.published.trial(revision.removeprefix("trial:"))
            try:
                drafts = json.loads(text) if text else {}
                found = self.prompts.overlaid(drafts) if drafts else self.prompts
            except (ValueError, CatalogError) as exc:
                log.warning("trial prompts %s refused (%s): the live ones serve", revision, exc)
                found = self.prompts
            if len(self._trial_prompts) >= 16:  # a few supervisors' trials at a time
                self._trial_prompts.clear()
            self._trial_prompts[key] = found
        return found

    def _flow_of(self, state: CallState) -> model.Flow | None:
        """The flow version the call started on (it finishes on it, whatever is published)."""
        served = self.library.served(state.flow, state.flow_revision)
        return served.flow if served else None

    def _commit(
        self, turn: _Turn, *, read: tuple[str, str] | None = None, replacing_turn: bool = False
    ) -> bool:
        """Save the turn's state as the call's next version, and point the document's actions
        at it (sealed in their URLs); False if the call moved on since the turn began. `read`:
        a hash field (key, field) to read in the same round trip (a new call's only), its value
        left in `turn.read_back`; `replacing_turn`: the journey's last turn is this one done
        again."""
        now = int(self.clock().timestamp() * 1000)
        turn.state.updated_at = now
        if not turn.state.started_at:
            turn.state.started_at = now
        replaces = self.states.advance(turn.state, turn.next_step)
        text = turn.state.to_json()  # serialized once: sealed into the URLs, and saved
        turn.fill_links(self.states.seal(turn.call_sid, turn.state, text=text))
        record = turn.record(now)
        if read is not None:
            saved, turn.read_back = self.states.create_and_read(
                turn.call_sid, turn.state, text=text, turn=record, read=read
            )
        else:
            saved = self.states.save(
                turn.call_sid,
                turn.state,
                replaces=replaces,
                text=text,
                turn=record,
                replacing_turn=replacing_turn,
            )
        ended = turn.state.outcome
        if saved and ended and ended != turn.outcome_before and not turn.state.simulated:
            metrics().ivr_calls.labels(turn.state.flow, call_outcome(ended)).inc()
        return saved

    def _confirm(self, turn: _Turn) -> None:
        """Before a side effect (a lookup, a code sent, checked or canceled): make sure the
        turn's state is the call's current one, so a replayed request does none of them."""
        if turn.unconfirmed:
            if not self.states.is_current(turn.call_sid, turn.state):
                raise _Stale
            turn.unconfirmed = False

    def fallback(self, call: CallInfo) -> VoiceResponse:
        """When a turn failed outright (the store is down…): the flow's on_error node, with
        nothing known about the caller (so never `verified`), else a polite goodbye. Touches
        no Redis."""
        try:
            served = self._served_for(call)
            flow = served.flow if served else None
            locale = self.prompts.resolve_locale(flow.locale if flow else None, call.caller_country)
            state = CallState(
                flow=flow.name if flow else "", node="", locale=locale, caller=call.caller
            )
            return self._on_error(flow, state, "the turn failed")
        except Exception:
            log.exception("call %s: even the fallback failed", call.call_sid)
            return self._goodbye(self.prompts.default_locale, "call.error")

    # -- walking -----------------------------------------------------------------------------

    def _walk(self, turn: _Turn, going: Going) -> None:
        """Enter nodes from `going` (STAY: the current node again; None: nothing more to do)
        until one asks the caller something or ends the call."""
        state = turn.state
        if going is None:
            return
        if isinstance(going, str):
            state.move_to(going)
        acted: set[str] = set()  # nodes with side effects (lookups, sends) entered this turn
        for _ in range(MAX_HOPS):
            node = turn.flow.nodes.get(state.node)
            if node is None:
                raise FlowError(f"node {state.node!r} is not in flow {turn.flow.name!r}")
            if not turn.entered or turn.entered[-1] != state.node:
                turn.entered.append(state.node)
            if isinstance(node, model.IdentifyNode | model.AuthenticateNode):
                if state.node in acted:
                    raise FlowError(f"node {state.node!r} entered twice in one turn: a loop")
                acted.add(state.node)
            enter = getattr(self, f"_enter_{node.type}")
            going = enter(turn, node)
            if going is None:
                return
            if isinstance(going, str):
                state.move_to(going)
        raise FlowError(f"more than {MAX_HOPS} nodes in one turn: a loop without a question?")

    def _repeat_current(self, call_sid: str, state: CallState | None) -> VoiceResponse:
        """The current question again, with no side effects (a replayed or raced request)."""
        if state is None:
            return self._goodbye(self.prompts.default_locale, "call.error")
        flow = self._flow_of(state)
        node = flow.nodes.get(state.node) if flow else None
        if flow is None or node is None or not node.waits_for_keys:
            return self._goodbye(state.locale, "call.error")
        turn = _Turn(flow, state, state.step, call_sid, prompts=self._prompts_of(state))
        self._gather_for(turn, node, repeat=True)
        turn.fill_links(self.states.seal(call_sid, state))
        return turn.response

    def _on_error(self, flow: model.Flow | None, state: CallState, why: str) -> VoiceResponse:
        """Route the call to the flow's on_error node (stateless), else a polite goodbye."""
        log.error("call in flow %s at %s: %s", state.flow, state.node, why)
        if not state.simulated:
            metrics().ivr_calls.labels(state.flow or "(none)", "error").inc()
        target = flow.nodes.get(flow.on_error) if flow and flow.on_error else None
        hands_over = isinstance(target, model.AgentNode) or (
            isinstance(target, model.TransferNode) and target.to_number
        )
        if flow is None or target is None or not hands_over:
            return self._goodbye(state.locale, "call.error")
        turn = _Turn(flow, state, state.step + 1, stateless=True, prompts=self._prompts_of(state))
        turn.say("call.error_transfer")
        getattr(self, f"_enter_{target.type}")(turn, target)
        return turn.response

    # -- speaking ----------------------------------------------------------------------------

    def _flush(self, turn: _Turn, target: Any) -> None:
        """Speak the collected prompts into `target` (the response, or a Gather)."""
        prompts = turn.prompts or self.prompts
        for key, values in turn.pending:
            prompts.speak(target, turn.state.locale, key, app_name=self.app_name, **values)
        turn.pending.clear()

    def _gather(self, turn: _Turn, **options: Any) -> Gather:
        """A DTMF <Gather> for this turn's step, holding the prompts collected so far; its
        action is told about silence too (actionOnEmptyResult), so timeouts are counted."""
        gather = Gather(input="dtmf", method="POST", action_on_empty_result=True, **options)
        turn.link(gather, self.urls.flow_step)
        self._flush(turn, gather)
        turn.response.append(gather)
        return gather

    def _goodbye(self, locale: str, key: str) -> VoiceResponse:
        response = VoiceResponse()
        self.prompts.speak(response, locale, key, app_name=self.app_name)
        response.hangup()
        return response

    def _gather_for(self, turn: _Turn, node: Any, *, repeat: bool) -> None:
        """Ask `node`'s question (again, when `repeat`: the short greeting, no new code)."""
        state = turn.state
        if isinstance(node, model.MenuNode):
            greeting = node.greeting
            if repeat or state.here.get("asked"):
                greeting = node.short_greeting or node.greeting
            turn.say(greeting)
            state.here["asked"] = True
            self._gather(turn, num_digits=1, timeout=node.timeout_seconds, finish_on_key="")
        elif isinstance(node, model.CollectNode):
            turn.say(node.prompt)
            # With a finish key, the caller ends the entry: a numDigits would end it first and
            # leave their "#" to cut the next question short.
            size = {} if node.finish_on_key else {"num_digits": node.max_digits}
            self._gather(
                turn, timeout=node.timeout_seconds, finish_on_key=node.finish_on_key, **size
            )
        elif isinstance(node, model.IdentifyNode):
            turn.say(node.ask_prompt)
            self._gather(turn, timeout=node.timeout_seconds, finish_on_key="#")
        elif isinstance(node, model.AuthenticateNode):
            if repeat or not turn.pending:
                turn.say(node.enter_code_prompt)
            self._gather(turn, timeout=node.timeout_seconds, finish_on_key="#")
        elif isinstance(node, model.LanguageNode):
            gather = self._gather(
                turn, num_digits=1, timeout=node.timeout_seconds, finish_on_key=""
            )
            for key, locale in node.options.items():
                prompts = turn.prompts or self.prompts
                prompts.speak(gather, locale, node.prompt, app_name=self.app_name, digit=key)

    # -- nodes that need no input ----------------------------------------------------------------

    def _enter_say(self, turn: _Turn, node: model.SayNode) -> str:
        for key in node.prompt:
            turn.say(key)
        return node.next

    _enter_play = _enter_say

    def _enter_goto(self, _turn: _Turn, node: model.GotoNode) -> str:
        return node.target

    def _enter_hours(self, _turn: _Turn, node: model.HoursNode) -> str:
        return node.open if is_open(node, self.clock()) else node.closed

    def _enter_hangup(self, turn: _Turn, node: model.HangupNode) -> None:
        turn.state.outcome = "hangup"
        turn.say(node.prompt)
        self._flush(turn, turn.response)
        turn.response.hangup()

    def _enter_transfer(self, turn: _Turn, node: model.TransferNode) -> Going:
        turn.say(node.prompt)
        if node.to_flow:
            served = self.library.served(node.to_flow)
            if served is None:
                raise FlowError(f"transfer to flow {node.to_flow!r}, which is not served")
            turn.flow = served.flow
            turn.state.flow = served.flow.name
            turn.state.flow_revision = served.revision
            return served.flow.start
        self._flush(turn, turn.response)
        turn.state.outcome = "transfer"
        turn.effect("transferred", to=phone.masked(node.to_number or ""))
        dial = Dial(caller_id=node.caller_id)
        dial.number(node.to_number)
        turn.response.append(dial)
        return None

    def _enter_agent(self, turn: _Turn, node: model.AgentNode) -> None:
        turn.say(node.prompt)
        self._flush(turn, turn.response)
        verified = turn.state.verified
        turn.state.outcome = "agent verified" if verified else "agent unverified"
        turn.effect(
            "handed_to_agent",
            queue=node.queue,
            dial=bool(node.dial),
            verified=verified,
            customer=turn.state.customer_id,
        )
        context = self._agent_context(turn, node)
        if node.queue is not None:
            if node.workflow_sid:
                enqueue = Enqueue(workflow_sid=node.workflow_sid)
                enqueue.task(json.dumps(context, separators=(",", ":")))
            else:
                enqueue = Enqueue(node.queue)
            turn.response.append(enqueue)
            return
        target = node.dial
        assert target is not None  # the model requires queue or dial
        comes_back = bool(node.no_answer) and not turn.stateless
        dial = Dial(
            timeout=target.timeout_seconds,
            method="POST" if comes_back else None,
            caller_id=target.caller_id,
        )
        if comes_back:
            turn.link(dial, self.urls.flow_dial_result)
        as_text = {name: _text(value) for name, value in context.items() if value is not None}
        if target.client:
            client = dial.client()
            client.identity(target.client)
            for name, value in as_text.items():
                client.parameter(name=name, value=value)
        elif target.sip:
            headers, shortened = sip_headers(as_text)
            if shortened:
                log.warning(
                    "call %s: SIP headers over %d characters: %s shortened",
                    turn.call_sid,
                    SIP_HEADERS_MAX_CHARS,
                    ", ".join(shortened),
                )
            dial.sip(target.sip + ("&" if "?" in target.sip else "?") + headers)
        else:
            dial.number(target.number)
        turn.response.append(dial)
        if not comes_back:
            turn.response.hangup()

    def _agent_context(self, turn: _Turn, node: model.AgentNode) -> dict[str, Any]:
        """Who the caller is and how they were verified, for the agent's screen."""
        state = turn.state
        return {
            **node.attributes,
            "verified": state.verified,
            "customer_id": state.customer_id,
            "customer_name": state.customer_name,
            "identified_by": state.identified_by,
            "auth_method": state.auth_method,
            "language": state.locale,
            "flow": state.flow,
            "caller": state.caller,
        }

    # -- nodes that ask the caller ---------------------------------------------------------------

    def _enter_menu(self, turn: _Turn, node: model.MenuNode) -> None:
        self._gather_for(turn, node, repeat=False)

    def _input_menu(self, turn: _Turn, node: model.MenuNode, digits: str | None, _: Any) -> str:
        state = turn.state
        if not digits:
            return node.exit if state.count("timeouts") >= node.max_timeouts else STAY
        if digits in node.options:
            return node.options[digits]
        turn.say(node.invalid_prompt)
        return node.exit if state.count("failures") >= node.max_failures else STAY

    def _enter_collect(self, turn: _Turn, node: model.CollectNode) -> None:
        self._gather_for(turn, node, repeat=False)

    def _input_collect(
        self, turn: _Turn, node: model.CollectNode, digits: str | None, _: Any
    ) -> str:
        valid = (
            digits is not None
            and digits.isdigit()
            and node.min_digits <= len(digits) <= node.max_digits
            and (node.pattern is None or _fullmatch(node.pattern, digits))
        )
        if valid:
            turn.state.variables[node.store_as] = digits
            return node.next
        turn.say(node.invalid_prompt)
        return node.on_failure if turn.state.count("failures") >= node.tries else STAY

    def _enter_identify(self, turn: _Turn, node: model.IdentifyNode) -> Going:
        state = turn.state
        if node.use_caller_id and not state.here.get("caller_id_tried"):
            state.here["caller_id_tried"] = True
            self._confirm(turn)
            customer = self._find_by_caller(state.caller)
            if customer is not None:
                self._identified(state, customer, "caller_id")
                turn.effect("identified", by="caller_id", customer=customer.id)
                return node.found
            turn.effect("not_identified", by="caller_id")
        self._gather_for(turn, node, repeat=False)
        return None

    def _input_identify(
        self, turn: _Turn, node: model.IdentifyNode, digits: str | None, _: Any
    ) -> str:
        state = turn.state
        if digits and digits.isdigit() and node.min_digits <= len(digits) <= node.max_digits:
            self._confirm(turn)
            customer = self.customers.by_account(digits) if self.customers else None
            if customer is not None:
                self._identified(state, customer, "account_number")
                turn.effect("identified", by="account_number", customer=customer.id)
                return node.found
            turn.effect("not_identified", by="account_number")
        if digits:  # silence is simply asked again
            turn.say(node.not_found_prompt)
        return node.not_found if state.count("failures") >= node.tries else STAY

    def _find_by_caller(self, caller: str) -> Customer | None:
        return self.customers.by_caller_id(caller) if self.customers else None

    @staticmethod
    def _identified(state: CallState, customer: Customer, how: str) -> None:
        state.customer_id = customer.id
        state.customer_name = customer.name
        state.identified_by = how
        state.verified = False
        state.auth_method = None
        state.customer_phone = customer.phone
        state.customer_sms = customer.sms

    def _enter_authenticate(self, turn: _Turn, node: model.AuthenticateNode) -> Going:
        state = turn.state
        if state.verified:
            return node.success
        if "verification" not in state.here:
            to = state.customer_phone
            if not state.customer_id or not to:
                log.warning(
                    "flow %s: authenticate at %s with nobody identified", state.flow, state.node
                )
                turn.say(node.unavailable_prompt)
                return node.failure
            channel = node.channel
            if channel == "auto":
                channel = "sms" if state.customer_sms else "call"
                if channel == "sms" and self._is_landline(to):
                    channel = "call"  # the record says SMS, but a landline cannot take one
            if channel == "call" and _same_number(to, state.caller):
                # The caller is on that very line: a code call would find it busy, and the
                # code must never be read on the inbound leg (caller ID can be spoofed).
                turn.say(node.same_line_prompt)
                return node.failure
            self._confirm(turn)
            try:
                verification = self.verifications.start(
                    to=to,
                    channel=channel,
                    locale=state.locale,
                    # Limits: per number and prefix as always, and per caller: one phone
                    # cannot pump codes to many accounts. The scope keeps this call's code its
                    # own: never a re-send of (or a check against) an app's verification.
                    client_id=f"ivr-caller:{state.caller or 'withheld'}",
                    scope=f"call:{turn.call_sid}",
                    simulated=state.simulated,
                )
            except (InvalidRequest, RateLimited, DeliveryFailed) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "scope", None)
                log.warning("flow %s: no code sent to the phone on file (%s)", state.flow, reason)
                turn.effect("code_not_sent", reason=str(reason))
                turn.say(node.unavailable_prompt)
                return node.failure
            state.here["verification"] = verification.sid
            turn.effect(
                "code_sent", channel=channel, to=phone.masked(to), verification=verification.sid
            )
            state.here["channel"] = channel
            if state.identified_by == "caller_id":  # they hold that phone: its ending helps
                sent = node.sent_sms_prompt if channel == "sms" else node.sent_call_prompt
                turn.say(sent, ending=_spoken_ending(to))
            else:  # a typed account number: say nothing of the number on file
                turn.say(node.sent_on_file_prompt)
        self._gather_for(turn, node, repeat=False)
        return None

    def _input_authenticate(
        self, turn: _Turn, node: model.AuthenticateNode, digits: str | None, _: Any
    ) -> str:
        state = turn.state
        sid = state.here.get("verification")
        if not sid:
            return STAY
        self._confirm(turn)  # a check counts a try, and the last failure cancels the code
        if digits:
            try:
                outcome = self.verifications.check(code=digits, sid=sid)
            except InvalidRequest:
                outcome = None  # not a code at all: a wrong try
            except (NotPending, NotFound, RateLimited) as exc:
                turn.effect("code_checked", outcome=exc.reason)
                turn.say(node.failed_prompt)
                return node.failure
            approved = outcome is not None and outcome.status is Status.APPROVED
            turn.effect("code_checked", outcome="approved" if approved else "wrong")
            if approved:
                state.verified = True
                state.auth_method = "sms_otp" if state.here.get("channel") == "sms" else "voice_otp"
                turn.say(node.verified_prompt)
                return node.success
        if state.count("failures") >= node.tries:
            self._cancel_quietly(sid)
            turn.say(node.failed_prompt)
            return node.failure
        if digits:  # silence: the question is simply asked again
            turn.say(node.wrong_prompt)
        return STAY

    def _is_landline(self, e164: str) -> bool:
        try:
            self.verifications.accept_number(e164, None, "sms")
        except InvalidRequest as exc:
            return exc.reason == "channel_unsupported"
        return False

    def _cancel_quietly(self, sid: str) -> None:
        """No more tries on this call: the code must not work anywhere else either."""
        with contextlib.suppress(NotFound, NotPending):
            self.verifications.cancel(sid)

    def _enter_language(self, turn: _Turn, node: model.LanguageNode) -> Going:
        """Ask for the language, unless the caller is on file (by caller ID) with a language
        this question offers: then it is theirs, and they are not asked. A caller ID proves
        nothing here, and needs not: it only chooses the prompts' language. On a new call's
        first turn the question is asked on the bet that the caller is not on file (see
        `answer`): the lookup then costs no round trip of its own."""
        known = turn.known_locale
        if known is None and turn.betting and turn.bet_on is None and self._can_look_up(turn):
            turn.bet_on = node
        elif known is None:
            known = self._offered_locale(self._find_by_caller(turn.state.caller), node)
        if known is not None:
            turn.state.locale = known
            turn.effect("language_from_record", locale=known)
            return node.next
        self._gather_for(turn, node, repeat=False)
        return None

    def _can_look_up(self, turn: _Turn) -> bool:
        return self.customers is not None and phone.e164_shaped(turn.state.caller) is not None

    def _offered_locale(self, customer: Customer | None, node: model.LanguageNode) -> str | None:
        """The offered locale the caller's record names (exactly, else by language)."""
        if customer is None or not customer.locale:
            return None
        offered = [self.prompts.catalog(locale).locale for locale in node.options.values()]
        wanted = customer.locale
        same_language = [loc for loc in offered if loc.split("-")[0] == wanted.split("-")[0]]
        if wanted in offered:
            return wanted
        return same_language[0] if same_language else None

    def _input_language(
        self, turn: _Turn, node: model.LanguageNode, digits: str | None, _: Any
    ) -> str:
        if digits in node.options:
            turn.state.locale = self.prompts.catalog(node.options[digits]).locale
            return node.next
        return node.next if turn.state.count("failures") >= node.tries else STAY

    def _input_agent(
        self, turn: _Turn, node: model.AgentNode, _digits: str | None, dial_status: str | None
    ) -> Going:
        """A <Dial> ended: on to no_answer unless somebody answered (then the call is over)."""
        if dial_status == "completed" or not node.no_answer:
            self._flush(turn, turn.response)
            turn.response.hangup()
            return None
        return node.no_answer


def _journey_keys(node: Any, digits: str | None, dial_status: str | None) -> str:
    """What the caller did, as the journey shows it: codes and collected digits masked, an
    account number down to its last two digits."""
    if dial_status:
        return f"dial {dial_status}"
    if not digits:
        return "(silence)"
    if isinstance(node, model.AuthenticateNode | model.CollectNode):
        return "•" * len(digits)
    if isinstance(node, model.IdentifyNode):
        return "•" * max(0, len(digits) - 2) + digits[-2:]
    return digits


def _fullmatch(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _same_number(on_file: str, caller: str) -> bool:
    number = phone.parse_caller_id(caller)
    return number is not None and number.e164 == on_file


def _spoken_ending(number: str) -> str:
    """The last two digits of a number, spaced so TTS reads them one by one ("6 1")."""
    return " ".join(number[-2:])


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


__all__ = ["CallInfo", "FlowEngine", "FlowError"]
