"""Each node type through signed webhooks, with small flows written for the test."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from ivr.simulator import PhoneSimulator
from tests.conftest import AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL, twilio_post, twiml

CALLER = "+14155550123"


@pytest.fixture
def flow_app(make_app, tmp_path):
    """An app serving the flows written by `write(name, yaml)`; returns (app, write)."""
    folder = tmp_path / "flows"
    folder.mkdir()

    def write(name: str, text: str) -> None:
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")

    write("default", "default: true\nstart: bye\nnodes:\n  bye: {type: hangup}\n")
    app = make_app(flows_dir=str(folder))
    return app, write


def run(app, keys=(), to=CALLER_ID, from_=CALLER):
    library = app.extensions["ivr"].flows.library
    library.refresh(force=True)
    phone = PhoneSimulator(app, AUTH_TOKEN)
    return phone.call(f"{PUBLIC_BASE_URL}/voice/incoming", from_=from_, to=to, keys=list(keys))


def kinds(transcript):
    return [event.kind for event in transcript.events]


def menu_of_two(one: str, two: str, targets: str) -> str:
    """A default flow that starts at a menu: key 1 goes to node `one`, key 2 to node `two`, no
    choice hangs up. `targets` is the YAML of those two nodes, written as entries of `nodes:`."""
    return (
        textwrap.dedent(
            f"""\
            default: true
            start: menu
            nodes:
              menu:
                type: menu
                greeting: flow.main_menu.long
                options: {{1: {one}, 2: {two}}}
                exit: bye
            """
        )
        + textwrap.indent(textwrap.dedent(targets).strip() + "\n", "  ")
        + "  bye: {type: hangup}\n"
    )


def test_say_and_play_speak_every_prompt_then_go_on(flow_app):
    app, write = flow_app
    write(
        "default",
        """
        default: true
        start: hello
        nodes:
          hello: {type: say, prompt: [flow.welcome, flow.opening_hours], next: done}
          done: {type: play, prompt: flow.goodbye, next: bye}
          bye: {type: hangup}
        """,
    )
    transcript = run(app)
    assert transcript.spoken == [
        "Thank you for calling Acme.",
        "Our agents are available every day, around the clock, except on public holidays.",
        "Thank you for calling. Goodbye.",
    ]
    assert transcript.ended_by == "hangup"


def test_goto_jumps_and_the_called_number_picks_the_flow(flow_app):
    app, write = flow_app
    write(
        "sales",
        """
        numbers: ["+14155550188"]
        start: jump
        nodes:
          jump: {type: goto, target: bye}
          bye: {type: hangup, prompt: flow.goodbye}
        """,
    )
    assert run(app, to="+14155550188").spoken == ["Thank you for calling. Goodbye."]
    assert run(app).spoken == [], "other numbers reach the default flow"


def test_collect_stores_valid_digits_and_retries_invalid_ones(flow_app):
    app, write = flow_app
    write(
        "default",
        """
        default: true
        start: card
        nodes:
          card:
            type: collect
            prompt: flow.card.ask_last_digits
            store_as: last4
            min_digits: 4
            max_digits: 4
            pattern: "[0-9]{3}[1-9]"
            tries: 2
            next: thanks
            on_failure: bye
          thanks: {type: hangup, prompt: flow.card.transfer}
          bye: {type: hangup, prompt: flow.goodbye}
        """,
    )
    good = run(app, ["1234#"])
    assert good.spoken[-1].startswith("Thank you. We are transferring")
    state = app.extensions["ivr"].flows.states.load(good.call_sid)
    assert state.variables["last4"] == "1234"
    bad = run(app, ["1230#", "12#"])
    assert bad.spoken.count("Sorry, that is not a valid entry.") == 2
    assert bad.spoken[-1] == "Thank you for calling. Goodbye."


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 23, 14, 0, tzinfo=UTC), "open"),  # Monday 09:00 in New York
        (datetime(2026, 11, 23, 12, 0, tzinfo=UTC), "closed"),  # Monday 07:00 in New York
        (datetime(2026, 11, 28, 14, 0, tzinfo=UTC), "closed"),  # Saturday
        (datetime(2026, 12, 25, 16, 0, tzinfo=UTC), "closed"),  # a holiday
    ],
)
def test_hours_branch_on_the_schedule_in_its_time_zone(flow_app, moment, expected):
    app, write = flow_app
    write(
        "default",
        """
        default: true
        start: hours
        nodes:
          hours:
            type: hours
            timezone: America/New_York
            weekly: {mon-fri: "08:00-20:00"}
            holidays: [2026-12-25]
            open: open
            closed: closed
          open: {type: hangup, prompt: flow.welcome}
          closed: {type: hangup, prompt: flow.agents_closed}
        """,
    )
    app.extensions["ivr"].flows.clock = lambda: moment
    spoken = run(app).spoken
    assert ("calling Acme" in spoken[0]) == (expected == "open")


def test_language_switches_every_later_prompt(flow_app):
    app, write = flow_app
    write(
        "default",
        """
        default: true
        start: lang
        nodes:
          lang: {type: language, options: {1: en-US, 2: es-ES}, next: bye}
          bye: {type: hangup, prompt: flow.goodbye}
        """,
    )
    transcript = run(app, ["2"])
    offers = [e for e in transcript.events if e.kind == "say"][:2]
    assert [e.attributes["language"] for e in offers] == ["en-US", "es-ES"]
    assert transcript.spoken[-1] == "Gracias por su llamada. Adiós."
    silent = run(app, ["", ""])
    assert silent.spoken[-1] == "Thank you for calling. Goodbye.", "no choice: keeps English"


def test_transfer_dials_a_number_or_continues_in_another_flow(flow_app):
    app, write = flow_app
    write(
        "default",
        menu_of_two(
            "out",
            "other",
            """
            out: {type: transfer, prompt: flow.card.transfer, to_number: "+18005550199"}
            other: {type: transfer, to_flow: second}
            """,
        ),
    )
    write("second", "start: hi\nnodes:\n  hi: {type: hangup, prompt: flow.goodbye}\n")
    dialed = run(app, ["1"])
    assert dialed.events[-1].kind == "dial"
    assert dialed.events[-1].attributes["number"] == "+18005550199"
    moved = run(app, ["2"])
    assert moved.spoken[-1] == "Thank you for calling. Goodbye."


def test_agent_dial_to_a_client_carries_parameters_and_sip_carries_headers(flow_app):
    app, write = flow_app
    write(
        "default",
        menu_of_two(
            "client",
            "sip",
            """
            client:
              type: agent
              dial: {client: agent_desk}
              attributes: {skill: cards}
            sip:
              type: agent
              prompt: null
              dial: {sip: "sip:queue@pbx.example.com"}
            """,
        ),
    )
    client = run(app, ["1"]).events[-1]
    assert client.kind == "dial"
    assert client.attributes["identity"] == "agent_desk"
    assert client.attributes["parameter:verified"] == "false"
    assert client.attributes["parameter:skill"] == "cards"
    assert client.attributes["parameter:language"] == "en-US"
    sip = run(app, ["2"]).events[-1]
    query = parse_qs(urlsplit(sip.attributes["sip"]).query)
    assert query["X-IVR-verified"] == ["false"]
    assert query["X-IVR-language"] == ["en-US"]


def test_a_dial_nobody_answers_goes_to_no_answer(flow_app):
    app, write = flow_app
    write(
        "default",
        """
        default: true
        start: agent
        nodes:
          agent:
            type: agent
            dial: {number: "+14155550199", timeout_seconds: 10}
            no_answer: sorry
          sorry: {type: hangup, prompt: flow.agents_closed}
        """,
    )
    app.extensions["ivr"].flows.library.refresh(force=True)
    client = app.test_client()
    params = {"CallSid": "CA" + "6" * 32, "From": CALLER, "To": CALLER_ID}
    root = twiml(twilio_post(client, "/voice/incoming", params))
    dial = root.find("Dial")
    assert dial.get("action").startswith(f"{PUBLIC_BASE_URL}/voice/flow/1/dial?s=")
    after = twiml(twilio_post(client, dial.get("action"), params | {"DialCallStatus": "busy"}))
    assert "not available" in " ".join(after.itertext())


def test_a_broken_edit_is_refused_and_the_last_good_flow_keeps_serving(flow_app, caplog):
    app, write = flow_app
    assert run(app).ended_by == "hangup"
    # No wait for the clock: the edit is longer than the file it replaces, and the library
    # notices a file whose size (or mtime) changed.
    write("default", "default: true\nstart: nowhere\nnodes:\n  bye: {type: hangup}\n")
    transcript = run(app)
    assert transcript.ended_by == "hangup", "the last good version answered"
    assert "REFUSED" in caplog.text


def test_numbers_dialed_for_an_agent_or_a_transfer_may_show_a_caller_id(flow_app):
    """Twilio shows the caller's number unless callerId says otherwise (it must be a number
    of the account, or Twilio answers error 13214): both hand-offs can set it."""
    app, write = flow_app
    write(
        "default",
        menu_of_two(
            "desk",
            "out",
            """
            desk: {type: agent, dial: {number: "+18005550111", caller_id: "+14155550100"}}
            out: {type: transfer, to_number: "+18005550199", caller_id: "+14155550100"}
            """,
        ),
    )
    for key in ("1", "2"):
        dialed = run(app, [key]).events[-1]
        assert dialed.kind == "dial"
        assert dialed.attributes["callerId"] == "+14155550100"


def test_sip_headers_stay_within_twilios_limit_and_say_what_was_shortened(flow_app, caplog):
    app, write = flow_app
    long_values = ", ".join(f"note{i}: {'n' * 250}" for i in range(6))
    write(
        "default",
        f"""
        default: true
        start: desk
        nodes:
          desk:
            type: agent
            prompt: null
            dial: {{sip: "sip:queue@pbx.example.com"}}
            attributes: {{{long_values}}}
        """,
    )
    with caplog.at_level("WARNING", logger="ivr.flows.engine"):
        sip = run(app).events[-1]
    uri = sip.attributes["sip"]
    assert len(urlsplit(uri).query) <= 1024
    query = parse_qs(urlsplit(uri).query)
    assert query["X-IVR-verified"] == ["false"], "the IVR's own headers are kept whole"
    assert all(query[f"X-IVR-note{i}"][0].startswith("n") for i in range(6)), "none dropped"
    assert "SIP headers over 1024 characters" in caplog.text and "note0" in caplog.text
