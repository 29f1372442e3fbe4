"""What a flow file may say: one pydantic model per node type, published as a JSON Schema.

Why pydantic: the same classes validate the YAML (every error with its place in the file),
give the engine typed nodes, and export the JSON Schema that editors use to autocomplete flow
files (`flows/flow.schema.json`, kept in step by a test). Unknown keys are errors, so a typo
never passes silently.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

NodeId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PromptKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")]
Key = Annotated[str, StringConstraints(pattern=r"^[0-9*#]$")]  # one key of the keypad
Locale = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}-[A-Z]{2}$")]
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
FlowName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
VariableName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Seconds = Annotated[int, Field(ge=1, le=60)]
Tries = Annotated[int, Field(ge=1, le=10)]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SPEC = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?$")
_TIME_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def _keys_as_text(value: Any) -> Any:
    """YAML reads `1: next` as the integer 1; keypad keys are text."""
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(None, description="A note for the team; shown in diagrams.")

    def exits(self) -> dict[str, str]:
        """Where this node may go next: branch label -> node id."""
        return {}

    @property
    def waits_for_keys(self) -> bool:
        """True when the node ends the TwiML document with a <Gather> for the caller."""
        return False

    def prompt_keys(self) -> list[str]:
        """Every prompt key this node may speak (for lint and `prompts check`)."""
        return []


class SayNode(_Node):
    """Speak prompts (their recordings when present), then go on."""

    type: Literal["say", "play"]
    prompt: list[PromptKey] = Field(min_length=1, description="A prompt key, or a list of them.")
    next: NodeId

    _list_prompt = field_validator("prompt", mode="before")(_as_list)

    def exits(self) -> dict[str, str]:
        return {"next": self.next}

    def prompt_keys(self) -> list[str]:
        return list(self.prompt)


class MenuNode(_Node):
    """Options on the keypad, FreeSWITCH mod_ivr style: the long greeting first, the short one
    on repeats; an invalid key or silence repeats the menu until max_failures / max_timeouts,
    then the exit node."""

    type: Literal["menu"]
    greeting: PromptKey
    short_greeting: PromptKey | None = Field(None, description="Said on repeats; else greeting.")
    invalid_prompt: PromptKey = "flow.menu.invalid"
    options: dict[Key, NodeId] = Field(min_length=1)
    timeout_seconds: Seconds = 5
    max_failures: Tries = 3
    max_timeouts: Tries = 3
    exit: NodeId = Field(description="Where the call goes once failures or timeouts run out.")

    _text_keys = field_validator("options", mode="before")(_keys_as_text)

    def exits(self) -> dict[str, str]:
        return {**{f"key {key}": node for key, node in self.options.items()}, "exit": self.exit}

    @property
    def waits_for_keys(self) -> bool:
        return True

    def prompt_keys(self) -> list[str]:
        return [k for k in (self.greeting, self.short_greeting, self.invalid_prompt) if k]


class CollectNode(_Node):
    """Collect digits into a call variable, checked against a pattern."""

    type: Literal["collect"]
    prompt: PromptKey
    invalid_prompt: PromptKey = "flow.collect.invalid"
    store_as: VariableName
    min_digits: Annotated[int, Field(ge=1, le=32)] = 1
    max_digits: Annotated[int, Field(ge=1, le=32)] = 20
    finish_on_key: Literal["#", "*", ""] = Field("#", description="'' ends on max_digits only.")
    pattern: str | None = Field(None, description="A regular expression the digits must match.")
    timeout_seconds: Seconds = 6
    tries: Tries = 3
    next: NodeId
    on_failure: NodeId

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _lengths_agree(self) -> CollectNode:
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits is larger than max_digits")
        return self

    def exits(self) -> dict[str, str]:
        return {"next": self.next, "on failure": self.on_failure}

    @property
    def waits_for_keys(self) -> bool:
        return True

    def prompt_keys(self) -> list[str]:
        return [self.prompt, self.invalid_prompt]


class IdentifyNode(_Node):
    """Find the caller in the customer directory: by caller ID, else by the account number
    they type (the directory, then the CRM hook)."""

    type: Literal["identify"]
    use_caller_id: bool = Field(True, description="Try the calling number first.")
    ask_prompt: PromptKey = "flow.identify.ask_account"
    not_found_prompt: PromptKey = "flow.identify.not_found"
    min_digits: Annotated[int, Field(ge=1, le=32)] = 4
    max_digits: Annotated[int, Field(ge=1, le=32)] = 16
    timeout_seconds: Seconds = 8
    tries: Tries = 3
    found: NodeId
    not_found: NodeId

    @model_validator(mode="after")
    def _lengths_agree(self) -> IdentifyNode:
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits is larger than max_digits")
        return self

    def exits(self) -> dict[str, str]:
        return {"found": self.found, "not found": self.not_found}

    @property
    def waits_for_keys(self) -> bool:
        return True

    def prompt_keys(self) -> list[str]:
        return [self.ask_prompt, self.not_found_prompt]


class AuthenticateNode(_Node):
    """Send a one-time code to the identified customer's phone on file (SMS, or a voice call
    when the record says no SMS), collect it on the keypad, and mark the call verified."""

    type: Literal["authenticate"]
    channel: Literal["auto", "sms", "call"] = Field(
        "auto", description="auto: SMS unless the customer's record says no SMS."
    )
    sent_sms_prompt: PromptKey = "flow.auth.sent_sms"
    sent_call_prompt: PromptKey = "flow.auth.sent_call"
    sent_on_file_prompt: PromptKey = Field(
        "flow.auth.sent_on_file",
        description="Said when the caller typed an account number: the ending of the phone on "
        "file is not read to someone who may not hold it.",
    )
    same_line_prompt: PromptKey = Field(
        "flow.auth.same_line",
        description="The code would be a call to the very line the caller is on: failure.",
    )
    enter_code_prompt: PromptKey = "flow.auth.enter_code"  # when the question is repeated
    wrong_prompt: PromptKey = "flow.auth.wrong_code"
    verified_prompt: PromptKey = "flow.auth.verified"
    failed_prompt: PromptKey = "flow.auth.failed"
    unavailable_prompt: PromptKey = "flow.auth.unavailable"
    timeout_seconds: Annotated[int, Field(ge=5, le=60)] = 15
    tries: Tries = 3
    success: NodeId
    failure: NodeId = Field(description="After the last wrong code, or when no code can be sent.")

    def exits(self) -> dict[str, str]:
        return {"verified": self.success, "not verified": self.failure}

    @property
    def waits_for_keys(self) -> bool:
        return True

    def prompt_keys(self) -> list[str]:
        return [
            self.sent_sms_prompt,
            self.sent_call_prompt,
            self.sent_on_file_prompt,
            self.same_line_prompt,
            self.enter_code_prompt,
            self.wrong_prompt,
            self.verified_prompt,
            self.failed_prompt,
            self.unavailable_prompt,
        ]


class HoursNode(_Node):
    """Open or closed now, by a weekly schedule in a time zone, with holidays."""

    type: Literal["hours"]
    timezone: str = Field(description="An IANA time zone, e.g. America/New_York.")
    weekly: dict[str, list[str]] = Field(
        description="Day or day range (mon, mon-fri; fri-mon wraps over the weekend) -> opening "
        "ranges like 08:00-17:30 (24:00 ends at midnight). A day in several entries adds up."
    )
    holidays: list[date] = Field(default_factory=list, description="Closed all day (YYYY-MM-DD).")
    open: NodeId
    closed: NodeId

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("weekly", mode="before")
    @classmethod
    def _weekly_shape(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        shaped = {}
        for day, ranges in value.items():
            if not _DAY_SPEC.match(str(day)):
                raise ValueError(f"{day!r} is not a day (mon…sun) or a range like mon-fri")
            ranges = _as_list(ranges) or []
            for text in ranges:
                match = _TIME_RANGE.match(str(text))
                if (
                    not match
                    or match.group(1, 2) >= match.group(3, 4)
                    or (match.group(3) == "24" and match.group(4) != "00")
                ):
                    raise ValueError(f"{text!r} is not an opening range like 08:00-17:30")
            shaped[str(day)] = [str(text) for text in ranges]
        return shaped

    def exits(self) -> dict[str, str]:
        return {"open": self.open, "closed": self.closed}


class LanguageNode(_Node):
    """Let the caller choose a language; every later prompt follows it."""

    type: Literal["language"]
    prompt: PromptKey = Field(
        "flow.language.option",
        description="Said once per option, in that option's language, with {digit}.",
    )
    options: dict[Key, Locale] = Field(min_length=1)
    timeout_seconds: Seconds = 5
    tries: Tries = 2
    next: NodeId

    _text_keys = field_validator("options", mode="before")(_keys_as_text)

    def exits(self) -> dict[str, str]:
        return {"next": self.next}

    @property
    def waits_for_keys(self) -> bool:
        return True

    def prompt_keys(self) -> list[str]:
        return [self.prompt]


# An agent node's extra attribute: a TaskRouter attribute, a <Client> <Parameter> and a SIP
# header (X-IVR-<name>) alike, so letters, digits, '-' and '_' only (a space or a non-ASCII
# letter makes the SIP URI invalid: Twilio error 13252).
AttributeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]
# What the IVR itself tells the agent (ivr.flows.engine's agent context).
AGENT_CONTEXT_NAMES = (
    "verified",
    "customer_id",
    "customer_name",
    "identified_by",
    "auth_method",
    "language",
    "flow",
    "caller",
)


class DialTarget(BaseModel):
    """Exactly one of number, sip or client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: E164 | None = None
    sip: Annotated[str, StringConstraints(pattern=r"^sips?:[^\s]+$")] | None = None
    client: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,121}$")] | None = None
    timeout_seconds: Annotated[int, Field(ge=5, le=120)] = 30
    caller_id: E164 | None = Field(
        None,
        description="The number the agent's phone shows (a number of your Twilio account, or "
        "one verified with it; Twilio refuses others: error 13214). Unset: the caller's.",
    )

    @model_validator(mode="after")
    def _caller_id_for_numbers(self) -> DialTarget:
        if self.caller_id and not self.number:
            raise ValueError("caller_id goes with number (a SIP or Client leg shows the caller)")
        return self

    @model_validator(mode="after")
    def _exactly_one(self) -> DialTarget:
        chosen = [name for name in ("number", "sip", "client") if getattr(self, name)]
        if len(chosen) != 1:
            raise ValueError("give exactly one of number, sip or client")
        return self


class AgentNode(_Node):
    """Hand the call to agents, carrying who the caller is and how they were verified: as
    TaskRouter <Task> attributes (queue + workflow_sid), <Parameter>s of a <Client>, or
    X- headers of a <Sip> URI. A plain queue or number carries nothing; agents then read
    GET /v1/calls/{CallSid}."""

    type: Literal["agent"]
    prompt: PromptKey | None = "flow.agent.connecting"
    queue: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 _-]{1,64}$")] | None = None
    workflow_sid: Annotated[str, StringConstraints(pattern=r"^WW[0-9a-f]{32}$")] | None = None
    dial: DialTarget | None = None
    attributes: dict[AttributeName, str] = Field(
        default_factory=dict, description="Fixed extra attributes, e.g. {skill: cards}."
    )
    no_answer: NodeId | None = Field(None, description="After a <Dial> nobody answered.")

    @model_validator(mode="after")
    def _attributes_fit(self) -> AgentNode:
        shadowed = sorted(set(self.attributes) & set(AGENT_CONTEXT_NAMES))
        if shadowed:
            raise ValueError(
                f"attributes: {', '.join(shadowed)} is set by the IVR (who the caller is and "
                "how they were verified); name your attribute otherwise"
            )
        long = sorted(name for name, value in self.attributes.items() if len(value) > 256)
        if long:
            raise ValueError(f"attributes: {', '.join(long)}: at most 256 characters")
        return self

    @model_validator(mode="after")
    def _one_destination(self) -> AgentNode:
        if (self.queue is None) == (self.dial is None):
            raise ValueError("give either queue (optionally with workflow_sid) or dial")
        if self.workflow_sid and not self.queue:
            raise ValueError("workflow_sid goes with queue")
        if self.no_answer and not self.dial:
            raise ValueError("no_answer goes with dial")
        return self

    def exits(self) -> dict[str, str]:
        return {"no answer": self.no_answer} if self.no_answer else {}

    def prompt_keys(self) -> list[str]:
        return [self.prompt] if self.prompt else []


class TransferNode(_Node):
    """Send the call to another number, or on into another flow."""

    type: Literal["transfer"]
    prompt: PromptKey | None = None
    to_number: E164 | None = None
    to_flow: FlowName | None = None
    caller_id: E164 | None = Field(
        None,
        description="The number the transferred-to phone shows (a number of your Twilio "
        "account or one verified with it: Twilio error 13214 otherwise). Unset: the caller's.",
    )

    @model_validator(mode="after")
    def _one_destination(self) -> TransferNode:
        if (self.to_number is None) == (self.to_flow is None):
            raise ValueError("give exactly one of to_number or to_flow")
        if self.caller_id and not self.to_number:
            raise ValueError("caller_id goes with to_number")
        return self

    def prompt_keys(self) -> list[str]:
        return [self.prompt] if self.prompt else []


class HangupNode(_Node):
    """Say a last prompt (optional) and end the call."""

    type: Literal["hangup"]
    prompt: PromptKey | None = None

    def prompt_keys(self) -> list[str]:
        return [self.prompt] if self.prompt else []


class GotoNode(_Node):
    """Jump to another node (a loop back to a menu, say)."""

    type: Literal["goto"]
    target: NodeId

    def exits(self) -> dict[str, str]:
        return {"goto": self.target}


Node = Annotated[
    SayNode
    | MenuNode
    | CollectNode
    | IdentifyNode
    | AuthenticateNode
    | HoursNode
    | LanguageNode
    | AgentNode
    | TransferNode
    | HangupNode
    | GotoNode,
    Field(discriminator="type"),
]


class Flow(BaseModel):
    """One flow file: which numbers it answers, where it starts, its nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FlowName = Field(description="Defaults to the file name without .yaml.")
    description: str | None = None
    numbers: list[E164] = Field(
        default_factory=list, description="Called numbers (Twilio's To) this flow answers."
    )
    default: bool = Field(False, description="Answers every number no other flow names.")
    locale: Locale | None = Field(
        None, description="The starting language; else the caller's country's, else the default."
    )
    start: NodeId
    on_error: NodeId | None = Field(
        None,
        description="Where a call goes when something fails (the store is down, a node vanished "
        "in an edit): an agent node or a transfer to a number, which takes the call over with "
        "nothing known about the caller. Anything else, or nothing: a polite goodbye.",
    )
    nodes: dict[NodeId, Node] = Field(min_length=1)


def node_types() -> dict[str, type[BaseModel]]:
    """A node's `type:` -> the model of that kind of node (say and play share one)."""
    union = get_args(Node)[0]
    return {
        literal: model
        for model in get_args(union)
        for literal in get_args(model.model_fields["type"].annotation)
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a flow file, for editors (yaml-language-server) and other tools."""
    schema = Flow.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/ivr/ivr/flows/flow.schema.json"
    schema["title"] = "IVR flow"
    return schema


__all__ = [
    "DAYS",
    "AgentNode",
    "AuthenticateNode",
    "CollectNode",
    "DialTarget",
    "Flow",
    "GotoNode",
    "HangupNode",
    "HoursNode",
    "IdentifyNode",
    "LanguageNode",
    "MenuNode",
    "Node",
    "SayNode",
    "TransferNode",
    "json_schema",
    "node_types",
]
