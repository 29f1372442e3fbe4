"""`ivr flows check | show | schema` and `ivr simulate`: the call-center team's tools."""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import click
from flask import Flask

from ivr.app import SIMULATED_CALLER_ID
from ivr.config import ConfigError, Settings, load_settings
from ivr.flows.library import PublishedFlows, cross_flow_problems, linter_for
from ivr.flows.loader import FLOW_SUFFIX, FlowFileError, LoadedFlow, load_flow_file
from ivr.flows.model import json_schema
from ivr.flows.problems import Problem, did_you_mean, errors
from ivr.flows.render import as_dot, as_mermaid, as_text_tree
from ivr.prompts import PromptCatalogs, load_catalogs
from ivr.simulator import CallTranscript, Heard, PhoneSimulator
from ivr.telephony import SimulatedCarrier
from ivr.users import AuditLog

CODE_KEY = "code"  # in --keys: type the one-time code the phone on file just received
_KEYS = re.compile(r"[0-9*#]*")  # what a keypad can press in one go ("" is silence)
ASK_KEYS = f"keys (Enter for silence, '{CODE_KEY}' to type the code the phone received)"


VERBOSITY = "ivr.verbosity"  # click context meta: how many -v the `ivr` command was given


def verbose_log_level() -> str | None:
    """INFO for `ivr -v …`, DEBUG for `ivr -vv …`, None without -v."""
    context = click.get_current_context(silent=True)
    verbosity = context.find_root().meta.get(VERBOSITY, 0) if context else 0
    return ("DEBUG" if verbosity > 1 else "INFO") if verbosity else None


def command_log_level() -> dict[str, str]:
    """The LOG_LEVEL override for an app a command builds: WARNING, so a command prints what
    it is for and not the app's start-up INFO ("flow default: loaded from …"), unless -v asks
    for more (verbose_log_level) or LOG_LEVEL is set in the environment."""
    level = verbose_log_level()
    if level:
        return {"LOG_LEVEL": level}
    return {} if os.environ.get("LOG_LEVEL") else {"LOG_LEVEL": "WARNING"}


def settings_or_exit() -> Settings:
    """The settings, or every bad value on stderr and exit status 2 (for all `ivr` commands)."""
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _catalogs(settings: Settings) -> PromptCatalogs | None:
    try:
        return load_catalogs(settings.voice_prompts_dir, settings.default_locale)
    except ConfigError as exc:
        click.echo(f"warning: prompts not checked: {exc}", err=True)
        return None


def _flow_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob(f"*{FLOW_SUFFIX}"))
    return [path]


@click.group()
def flows() -> None:
    """Check, draw and export the IVR flows (FLOWS_DIR)."""


@flows.command("check")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--require-audio", is_flag=True, help="Warn about prompts with no recording.")
def flows_check(path: Path | None, require_audio: bool) -> None:
    """Validate flow files (a file, or every *.yaml of a folder; default FLOWS_DIR).

    Schema errors come with their line; then lint: unknown or unreachable nodes, menus with no
    way out, loops without an exit, prompts missing in a locale. Exits 1 on any error.
    """
    settings = settings_or_exit()
    folder = path or settings.flows_dir
    files = _flow_files(folder)
    if not files:
        click.echo(f"{folder}: no flow files (*{FLOW_SUFFIX})", err=True)
        sys.exit(1)
    prompts = _catalogs(settings)
    linter = linter_for(prompts, require_audio=require_audio)
    names = {file.stem for file in _flow_files(folder if folder.is_dir() else folder.parent)}
    problems: list[Problem] = []
    loaded: dict[str, LoadedFlow] = {}
    for file in files:
        try:
            flow = load_flow_file(file, linter, names)
        except FlowFileError as exc:
            problems += exc.problems
            continue
        loaded[flow.flow.name] = flow
        problems += flow.warnings
    if folder.is_dir():
        problems += cross_flow_problems(loaded)
    for problem in problems:
        click.echo(str(problem))
    found = errors(problems)
    click.echo(
        f"{len(files)} flow file(s): {len(found)} error(s), {len(problems) - len(found)} warning(s)"
    )
    if found:
        sys.exit(1)


@flows.command("show")
@click.argument("name")
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
)
def flows_show(name: str, output: str) -> None:
    """Draw a flow (by name in FLOWS_DIR, or a file path): a text tree, Mermaid or Graphviz."""
    settings = settings_or_exit()
    file = Path(name) if name.endswith(FLOW_SUFFIX) else settings.flows_dir / f"{name}{FLOW_SUFFIX}"
    if not file.is_file():
        click.echo(_no_such_flow(name, file, settings.flows_dir), err=True)
        sys.exit(1)
    try:
        flow = load_flow_file(file, None, set()).flow
    except FlowFileError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    render = {"text": as_text_tree, "mermaid": as_mermaid, "dot": as_dot}[output]
    click.echo(render(flow))


def _no_such_flow(name: str, file: Path, folder: Path) -> str:
    """Why `flows show NAME` found nothing, and which flows there are to show."""
    if name.endswith(FLOW_SUFFIX):
        return f"no flow file {file}"
    existing = [path.stem for path in _flow_files(folder)] if folder.is_dir() else []
    if not existing:
        return f"no flow {name!r}: {folder} (FLOWS_DIR) holds no flow files (*{FLOW_SUFFIX})"
    return (
        f"no flow {name!r} in {folder} (FLOWS_DIR){did_you_mean(name, existing)}\n"
        f"flows there: {', '.join(existing)}"
    )


def _published_flows() -> tuple[PublishedFlows, AuditLog]:
    """The app's published flows (Redis) and its audit log, for import and export."""
    from ivr.app import create_app

    try:
        app = create_app(command_log_level())
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    library = app.extensions["ivr"].flows.library
    if not isinstance(library, PublishedFlows):  # pragma: no cover - the app always has Redis
        raise click.ClickException("flows are not published in Redis here")
    return library, app.extensions["ivr"].audit


@flows.command("import")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--comment", default="", help="Said in the history of every imported flow.")
def flows_import(path: Path | None, comment: str) -> None:
    """Publish flow files (a file, or every *.yaml of a folder; default FLOWS_DIR) as the
    live versions, after the checks of `ivr flows check`. Nothing is published if any fails."""
    library, audit = _published_flows()
    folder = path or settings_or_exit().flows_dir
    files = _flow_files(folder)
    if not files:
        raise click.ClickException(f"{folder}: no flow files (*{FLOW_SUFFIX})")
    texts = {file.stem: file.read_text(encoding="utf-8") for file in files}
    found: list[Problem] = []
    for name, text in texts.items():
        _, problems = library.check(name, text)
        found += [p for p in problems if p.severity == "error"]
    for problem in found:
        click.echo(str(problem), err=True)
    if found:
        click.echo(f"{len(found)} error(s): nothing was published", err=True)
        sys.exit(1)
    actor = f"cli:{getpass.getuser()}"
    for name, text in texts.items():
        before = library.versions.live(name)
        if before is not None and before.text == text:
            click.echo(f"{name}: unchanged (version {before.number})")
            continue
        version = library.versions.publish(
            name, text, author=actor, comment=comment or "ivr flows import", source="cli"
        )
        audit.record(
            actor,
            "flow.publish",
            name,
            before={"version": before.number if before else None},
            after={"version": version.number, "comment": version.comment},
        )
        click.echo(f"{name}: version {version.number} is live")


@flows.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def flows_export(directory: Path) -> None:
    """Write every flow's live version to DIRECTORY/<name>.yaml (for teams that keep their
    flows in git); a file written this way is not imported again."""
    library, _ = _published_flows()
    directory.mkdir(parents=True, exist_ok=True)
    live = library.versions.live_versions()
    for name, version in sorted(live.items()):
        (directory / f"{name}{FLOW_SUFFIX}").write_text(version.text, encoding="utf-8")
        click.echo(f"{name}: version {version.number} → {directory / (name + FLOW_SUFFIX)}")
    if not live:
        click.echo("no flow is published", err=True)


@flows.command("schema")
def flows_schema() -> None:
    """Print the JSON Schema of a flow file (flows/flow.schema.json is this output)."""
    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


# -- ivr simulate ---------------------------------------------------------------------------------


def _not_keys(text: str) -> str:
    return f"{text!r}: keys are 0-9, * and #, or {CODE_KEY!r}"


def _parse_keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [part.strip() for part in text.split(",")]
    for part in keys:
        if part != CODE_KEY and not _KEYS.fullmatch(part):
            raise click.BadParameter(_not_keys(part))
    return keys


@click.command()
@click.argument("flow", required=False)
@click.option("--from", "caller", default="+14155550123", show_default=True, help="Caller ID.")
@click.option("--to", "called", help="The number called (default: the flow's first number).")
@click.option(
    "--keys",
    help="Keys for each question in turn, comma-separated (48213# types 48213 then #; an empty "
    f"entry is silence; '{CODE_KEY}' types the code the phone on file received). Without "
    "--keys you type them as the call goes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the transcript as JSON.")
def simulate(
    flow: str | None, caller: str, called: str | None, keys: str | None, as_json: bool
) -> None:
    """Call a flow through the real webhooks, in-process and signed like Twilio; print what the
    caller hears and where the call ends. No phone, no Twilio: codes go to the simulated
    carrier (the configured Redis holds the call's state)."""
    settings = settings_or_exit()  # a bad configuration is reported before anything starts
    if settings.uses_twilio:
        # Its calls would touch this deployment's Redis: real customers' send limits, and
        # codes printed on a terminal. Simulate against a development configuration.
        click.echo(
            "ivr simulate runs against a development setup: unset TWILIO_ACCOUNT_SID and "
            "TWILIO_AUTH_TOKEN (and point REDIS_URL at a development Redis, or unset it)",
            err=True,
        )
        sys.exit(2)
    key_list = _parse_keys(keys)
    try:
        simulation = FlowSimulation.open()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        to = simulation.number_for(flow, called)
    except LookupError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    printer = None if as_json else click.echo
    transcript = simulation.run(
        caller=caller,
        to=to,
        keys=key_list,
        ask=None if key_list is not None else _ask,
        echo=printer,
    )
    if as_json:
        click.echo(json.dumps(transcript.to_dict(), indent=2, ensure_ascii=False))
    if transcript.ended_by == "error":
        sys.exit(1)


class FlowSimulation:
    """An app with the simulated carrier, and a phone that calls it (ivr.simulator)."""

    def __init__(self, app: Flask):
        self.app = app
        self.ivr = app.extensions["ivr"]
        self.phone = PhoneSimulator(app, self.ivr.secrets.webhook_auth_token)
        self.base_url = self.ivr.settings.public_base_url or "http://localhost"

    @classmethod
    def open(cls) -> FlowSimulation:
        """The configured app, but never a real carrier: codes go to the simulated one."""
        from ivr.app import create_app

        overrides = {"TWILIO_ACCOUNT_SID": None, "TWILIO_AUTH_TOKEN": None}
        return cls(create_app(overrides | command_log_level()))

    def number_for(self, flow_name: str | None, called: str | None) -> str:
        """The number to call to reach `flow_name` (its first number; any number for the
        default flow). LookupError when the flow is unknown or no call can reach it."""
        if called:
            return called
        library = self.ivr.flows.library
        flow = library.get(flow_name) if flow_name else library.for_number("")
        if flow is None:
            served = sorted(library.flows)
            hint = did_you_mean(flow_name, served) if flow_name else ""
            hint += f"\nflows served: {', '.join(served)}" if served else ""
            refused = [str(p) for ps in library.refused.values() for p in errors(ps)]
            hint += ("\nrefused:\n  " + "\n  ".join(refused)) if refused else ""
            raise LookupError(f"no flow {flow_name or '(default)'!r} is served{hint}")
        if flow.numbers:
            return flow.numbers[0]
        if library.for_number("") is flow:
            return self.ivr.settings.twilio_caller_id or SIMULATED_CALLER_ID
        raise LookupError(
            f"flow {flow.name!r} answers no number: give it numbers: [...] or default: true"
        )

    def run(
        self,
        *,
        caller: str,
        to: str,
        keys: list[str] | None,
        ask: Callable[[], str | None] | None,
        echo: Callable[[str], None] | None,
    ) -> CallTranscript:
        """Call `to` from `caller`; at each question press the next of `keys` (or `ask`)."""
        remaining = list(keys or [])
        shown = 0

        def show(transcript: CallTranscript) -> None:
            nonlocal shown
            if echo:
                for event in transcript.events[shown:]:
                    echo(describe(event))
            shown = len(transcript.events)

        def press(transcript: CallTranscript) -> str | None:
            show(transcript)
            if keys is not None:
                pressed = remaining.pop(0) if remaining else None
            else:
                pressed = ask() if ask else None
            if pressed == CODE_KEY:
                pressed = self.received_code(echo)
            return pressed or None

        if echo:
            echo(f"calling {to} from {caller}")
        transcript = self.phone.call(
            f"{self.base_url}/voice/incoming", from_=caller, to=to, keys=press
        )
        show(transcript)
        if echo:
            echo(f"call ended: {transcript.ended_by}")
            state = self.ivr.flows.states.load(transcript.call_sid)
            if state is not None:
                facts = ", ".join(f"{k}={v}" for k, v in state.summary().items() if v is not None)
                echo(f"the agent would see: {facts}")
        return transcript

    def received_code(self, echo: Callable[[str], None] | None) -> str | None:
        """The code the phone on file just got: read from its SMS, or heard by answering the
        voice call placed to it."""
        carrier = self.ivr.carrier
        latest = carrier.outbox(limit=1) if isinstance(carrier, SimulatedCarrier) else []
        if not latest:
            return None
        sent = latest[0]
        if sent["kind"] == "sms":
            text = sent.get("body", "")
            if echo:
                echo(f"  (the phone {sent['to']} gets an SMS: {text!r})")
        else:
            heard = self.phone.call(
                sent["url"],
                from_=sent["from"],
                to=sent["to"],
                keys=["5"],
                call_sid=sent["sid"],
                direction="outbound-api",
            )
            text = " ".join(heard.spoken)
            if echo:
                echo(f"  (the phone {sent['to']} rings; answered, it hears: {text!r})")
        found = re.search(r"(?:\d\s*){4,10}", text)
        return re.sub(r"\s", "", found.group(0)) if found else None


def describe(event: Heard) -> str:
    """One line of the transcript, as the caller experiences it."""
    details = event.attributes
    if event.kind == "say":
        return f"  hears ({details.get('language', '?')}): {event.text}"
    if event.kind == "play":
        return f"  hears a recording: {event.text}"
    if event.kind == "keys":
        return f"  presses: {event.text}"
    if event.kind == "timeout":
        return "  stays silent"
    if event.kind == "enqueue":
        extra = f" with task {details['task']}" if "task" in details else ""
        return f"  -> waits in queue {event.text or details.get('workflowSid', '')!r}{extra}"
    if event.kind == "dial":
        target = details.get("identity") or details.get("sip") or details.get("number", "")
        parameters = {
            k.split(":", 1)[1]: v for k, v in details.items() if k.startswith("parameter:")
        }
        extra = f" with {parameters}" if parameters else ""
        return f"  -> is connected to {target}{extra}"
    return f"  {event.kind} {event.text}".rstrip()


def _ask() -> str | None:
    """The caller's next keys, typed at the terminal; asked again until a keypad could press
    them (or they are CODE_KEY)."""
    while True:
        text = click.prompt(ASK_KEYS, default="", show_default=False).strip()
        if text == CODE_KEY or _KEYS.fullmatch(text):
            return text or None
        click.echo(f"  {_not_keys(text)}", err=True)


__all__ = ["flows", "simulate"]
