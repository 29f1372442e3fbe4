"""Flow lint: branches to nowhere, loops the engine would spin in, calls that cannot end, codes
sent before anyone is identified, and prompts a caller's language cannot speak."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import yaml

from ivr.config import DEFAULT_PROMPTS_DIR
from ivr.flows.lint import lint, reachable
from ivr.flows.loader import parse_flow_file
from ivr.flows.model import Flow
from ivr.flows.problems import errors
from ivr.prompts import PromptCatalogs

DEFAULT_FLOW = Path(__file__).resolve().parent.parent / "flows" / "default.yaml"


# Building flows


def make_flow(nodes, start=None, **fields):
    data = {"name": "test", "start": start or next(iter(nodes)), "nodes": nodes, **fields}
    return Flow.model_validate(data)


def say(next_node, prompt="p.hello"):
    return {"type": "say", "prompt": prompt, "next": next_node}


def goto(target):
    return {"type": "goto", "target": target}


def menu(options, exit_node, greeting="p.menu"):
    return {"type": "menu", "greeting": greeting, "options": options, "exit": exit_node}


def collect(next_node, on_failure):
    return {
        "type": "collect",
        "prompt": "p.ask",
        "store_as": "digits",
        "next": next_node,
        "on_failure": on_failure,
    }


def identify(found, not_found, use_caller_id=True):
    return {
        "type": "identify",
        "use_caller_id": use_caller_id,
        "found": found,
        "not_found": not_found,
    }


def authenticate(success, failure):
    return {"type": "authenticate", "success": success, "failure": failure}


def hours(open_node, closed_node, weekly=None):
    return {
        "type": "hours",
        "timezone": "America/New_York",
        "weekly": {"mon-fri": "08:00-17:00"} if weekly is None else weekly,
        "open": open_node,
        "closed": closed_node,
    }


def hangup(prompt="p.bye"):
    return {"type": "hangup", "prompt": prompt}


def agent(**fields):
    return {"type": "agent", "queue": "support", "prompt": None, **fields}


def messages(problems, severity=None):
    return [p.message for p in problems if severity is None or p.severity == severity]


def only(problems, severity="error"):
    found = [p for p in problems if p.severity == severity]
    assert len(found) == 1, found
    return found[0]


# The shipped flow


def test_the_default_flow_lints_without_errors_against_the_shipped_prompts():
    flow, lines = parse_flow_file(DEFAULT_FLOW)
    prompts = PromptCatalogs(DEFAULT_PROMPTS_DIR, "en-US")
    problems = lint(flow, prompts, flow_names={"default"}, file=str(DEFAULT_FLOW), lines=lines)
    assert errors(problems) == []


def test_a_sound_flow_has_no_problems():
    flow = make_flow(
        {
            "welcome": say("main_menu"),
            "main_menu": menu({"1": "account", "2": "main_menu", "0": "operator"}, "goodbye"),
            "account": identify("verify", "operator"),
            "verify": authenticate("open_now", "operator"),
            "open_now": hours("operator", "goodbye"),
            "operator": agent(),
            "goodbye": hangup(),
        }
    )
    assert lint(flow) == []


# Names that lead nowhere


def test_an_option_to_an_unknown_node_is_an_error_with_a_suggestion():
    flow = make_flow(
        {
            "main_menu": menu({"1": "account_help", "3": "acount_help"}, "goodbye"),
            "account_help": agent(),
            "goodbye": hangup(),
        }
    )
    problem = only(lint(flow, file="flows/test.yaml", lines={"main_menu": 7}))
    assert problem.message == (
        "option 3 goes to 'acount_help', which is not a node; did you mean 'account_help'?"
    )
    assert (problem.file, problem.line, problem.node) == ("flows/test.yaml", 7, "main_menu")
    assert str(problem).startswith("flows/test.yaml:7: error: option 3 goes to")


@pytest.mark.parametrize(
    ("node", "phrase"),
    [
        (goto("nowhere"), "target goes to 'nowhere'"),
        (say("nowhere"), "next goes to 'nowhere'"),
        (identify("goodbye", "nowhere"), "the 'not found' branch goes to 'nowhere'"),
        (menu({"1": "goodbye"}, "nowhere"), "exit goes to 'nowhere'"),
    ],
)
def test_every_kind_of_branch_to_an_unknown_node_is_named(node, phrase):
    problems = lint(make_flow({"first": node, "goodbye": hangup()}))
    assert messages(problems, "error") == [f"{phrase}, which is not a node"]


def test_an_unknown_start_is_an_error_and_not_a_flood_of_unreachable_nodes():
    flow = make_flow({"welcome": say("goodbye"), "goodbye": hangup()}, start="welcom")
    problem = only(lint(flow))
    assert problem.message == "start 'welcom' is not a node; did you mean 'welcome'?"
    assert messages(lint(flow), "warning") == []


def test_an_unknown_on_error_node_is_an_error():
    flow = make_flow({"goodbye": hangup()}, on_error="operatr")
    assert messages(lint(flow), "error") == ["on_error 'operatr' is not a node"]


def test_a_transfer_to_a_flow_that_does_not_exist_is_an_error_when_flows_are_known():
    flow = make_flow({"handoff": {"type": "transfer", "to_flow": "billing"}})
    assert lint(flow) == []  # no list of flows: not checked
    assert lint(flow, flow_names={"billing", "test"}) == []
    problem = only(lint(flow, flow_names={"biling", "test"}))
    assert problem.message == (
        "transfer to flow 'billing', which is not a flow file; did you mean 'biling'?"
    )
    assert problem.node == "handoff"


# Loops without a question


def test_gotos_that_point_at_each_other_are_a_loop_without_a_question():
    flow = make_flow({"first": goto("second"), "second": goto("first"), "bye": hangup()})
    loop = [p for p in lint(flow) if "loop without a question" in p.message]
    assert len(loop) == 1
    assert loop[0].severity == "error"
    assert loop[0].node == "first"
    assert "first -> second -> first" in loop[0].message


def test_a_goto_to_itself_is_a_loop():
    flow = make_flow({"start_here": say("spin"), "spin": goto("spin")})
    problems = lint(flow)
    assert any("loop without a question: spin -> spin;" in m for m in messages(problems, "error"))


def test_say_nodes_in_a_ring_spin_even_if_the_ring_has_a_way_out():
    # An hours node leaves the ring when closed; while open, the engine goes round for ever.
    flow = make_flow(
        {
            "check": hours("news", "goodbye"),
            "news": say("more_news"),
            "more_news": say("check"),
            "goodbye": hangup(),
        }
    )
    problem = only(lint(flow))
    assert problem.message.startswith(
        "loop without a question: check -> news -> more_news -> check"
    )


def test_a_loop_through_a_menu_is_driven_by_the_caller_and_is_fine():
    flow = make_flow(
        {
            "main_menu": menu({"1": "info", "0": "goodbye"}, "goodbye"),
            "info": say("back"),
            "back": goto("main_menu"),
            "goodbye": hangup(),
        }
    )
    assert lint(flow) == []


def test_a_loop_through_identify_by_caller_id_may_spin_and_is_a_warning():
    flow = make_flow(
        {
            "who": identify("again", "goodbye"),
            "again": goto("who"),
            "goodbye": hangup(),
        }
    )
    problem = only(lint(flow), "warning")
    assert problem.message.startswith("possible loop without a question: who -> again -> who;")
    assert "who finds the caller by caller ID" in problem.message
    assert errors(lint(flow)) == []


def test_identify_without_caller_id_always_asks_so_its_loop_is_fine():
    flow = make_flow(
        {
            "who": identify("again", "goodbye", use_caller_id=False),
            "again": goto("who"),
            "goodbye": hangup(),
        }
    )
    assert lint(flow) == []


def test_a_transfer_into_the_same_flow_closes_a_loop():
    flow = make_flow({"welcome": say("again"), "again": {"type": "transfer", "to_flow": "test"}})
    problem = only(lint(flow, flow_names={"test"}))
    assert "welcome -> again -> welcome" in problem.message


# Ways out


def test_a_menu_whose_options_and_exit_all_lead_back_to_it_has_no_way_out():
    flow = make_flow(
        {
            "welcome": say("main_menu"),
            "main_menu": menu({"1": "main_menu", "2": "repeat"}, "main_menu"),
            "repeat": goto("main_menu"),
        }
    )
    problems = errors(lint(flow, lines={"main_menu": 4}))
    assert messages(problems) == [
        "no call can ever end: nothing reachable from start 'welcome' leads to an agent, "
        "transfer or hangup node",
        "menu without a way out: every option and the exit lead back into main_menu, repeat; "
        "nothing there reaches an agent, transfer or hangup node",
    ]
    assert (problems[1].node, problems[1].line) == ("main_menu", 4)


def test_two_menus_that_only_lead_to_each_other_are_one_problem():
    flow = make_flow(
        {
            "main_menu": menu({"1": "sub_menu", "9": "goodbye"}, "goodbye"),
            "sub_menu": menu({"1": "other_menu"}, "other_menu"),
            "other_menu": menu({"1": "sub_menu"}, "sub_menu"),
            "goodbye": hangup(),
        }
    )
    problem = only(lint(flow))
    assert problem.node == "sub_menu"
    assert problem.message.startswith(
        "menu without a way out: every option and the exit lead back into sub_menu, other_menu;"
    )


def test_a_menu_leading_into_a_trap_is_not_reported_itself():
    flow = make_flow(
        {
            "main_menu": menu({"1": "trap"}, "trap"),
            "trap": menu({"1": "trap"}, "trap"),
        }
    )
    trap_problems = [p for p in lint(flow) if "without a way out" in p.message]
    assert [p.node for p in trap_problems] == ["trap"]


def test_a_menu_with_one_option_out_is_fine():
    flow = make_flow(
        {
            "main_menu": menu({"1": "main_menu", "0": "operator"}, "goodbye"),
            "operator": agent(),
            "goodbye": hangup(),
        }
    )
    assert lint(flow) == []


def test_a_menu_whose_exit_comes_straight_back_never_lets_a_silent_caller_go():
    flow = make_flow(
        {
            "main_menu": menu({"1": "operator"}, "sorry"),
            "sorry": say("again", prompt="p.sorry"),
            "again": goto("main_menu"),
            "operator": agent(),
        }
    )
    problem = only(lint(flow), "warning")
    assert problem.node == "main_menu"
    assert "a caller who stays silent or keeps pressing wrong keys is never let go" in (
        problem.message
    )


def test_collect_nodes_that_only_retry_each_other_have_no_way_out():
    flow = make_flow({"ask": collect("confirm", "ask"), "confirm": collect("ask", "confirm")})
    assert messages(lint(flow), "error") == [
        "no call can ever end: nothing reachable from start 'ask' leads to an agent, "
        "transfer or hangup node",
        "no way out: ask, confirm only lead to each other; nothing there reaches an agent, "
        "transfer or hangup node",
    ]


def test_a_dial_agents_no_answer_branch_may_lead_back_to_the_menu():
    flow = make_flow(
        {
            "main_menu": menu({"1": "desk"}, "main_menu"),
            "desk": {
                "type": "agent",
                "dial": {"client": "desk_1"},
                "no_answer": "main_menu",
            },
        }
    )
    assert errors(lint(flow)) == []


def test_a_branch_to_an_unknown_node_is_reported_once_not_also_as_a_trap():
    flow = make_flow({"main_menu": menu({"1": "main_menu"}, "goodby"), "goodbye": hangup()})
    assert messages(lint(flow)) == [
        "exit goes to 'goodby', which is not a node; did you mean 'goodbye'?",
        "not reachable from start 'main_menu'",
    ]


# Authentication needs a customer


def test_authenticate_reached_without_identify_is_an_error_with_the_path():
    flow = make_flow(
        {
            "main_menu": menu({"1": "verify", "0": "operator"}, "operator"),
            "verify": authenticate("operator", "operator"),
            "operator": agent(),
        }
    )
    problem = only(lint(flow, lines={"verify": 12}))
    assert problem.message == (
        "reached with nobody identified (main_menu -> verify): put an identify node before it "
        "and continue from its found branch"
    )
    assert (problem.node, problem.line) == ("verify", 12)


def test_authenticate_after_identify_found_is_fine():
    flow = make_flow(
        {
            "who": identify("verify", "operator"),
            "verify": authenticate("operator", "who_again"),
            "who_again": goto("who"),  # a retry that asks again is still after identify
            "operator": agent(),
        }
    )
    assert errors(lint(flow)) == []


def test_identifys_not_found_branch_does_not_identify_anyone():
    flow = make_flow(
        {
            "who": identify("operator", "verify"),
            "verify": authenticate("operator", "operator"),
            "operator": agent(),
        }
    )
    assert "(who -> verify)" in only(lint(flow)).message


def test_one_path_around_identify_is_enough_to_be_an_error():
    flow = make_flow(
        {
            "main_menu": menu({"1": "who", "2": "shortcut"}, "operator"),
            "who": identify("verify", "operator"),
            "shortcut": say("verify"),
            "verify": authenticate("operator", "operator"),
            "operator": agent(),
        }
    )
    assert "(main_menu -> shortcut -> verify)" in only(lint(flow)).message


# Reachability, on_error, hours


def test_unreachable_nodes_are_warnings_on_their_line():
    flow = make_flow(
        {"welcome": say("goodbye"), "goodbye": hangup(), "orphan": say("goodbye")},
    )
    problem = only(lint(flow, lines={"orphan": 20}), "warning")
    assert (problem.message, problem.node, problem.line) == (
        "not reachable from start 'welcome'",
        "orphan",
        20,
    )
    assert reachable(flow) == {"welcome", "goodbye"}


def test_the_on_error_node_and_what_follows_it_are_reachable():
    flow = make_flow(
        {
            "welcome": hangup(),
            "desk": {"type": "agent", "dial": {"number": "+18005550100"}, "no_answer": "bye"},
            "bye": hangup(),
        },
        on_error="desk",
    )
    assert lint(flow) == []


def test_on_error_at_a_node_that_cannot_take_over_a_call_is_a_warning():
    flow = make_flow(
        {"main_menu": menu({"1": "bye"}, "bye"), "bye": hangup()}, on_error="main_menu"
    )
    problem = only(lint(flow), "warning")
    assert problem.message.startswith("on_error goes to 'main_menu', a menu node:")


def test_an_hours_node_that_is_never_open_is_a_warning():
    flow = make_flow({"check": hours("open", "shut", weekly={}), "open": agent(), "shut": hangup()})
    problem = only(lint(flow), "warning")
    assert problem.message == (
        "never open: the weekly schedule has no opening hours, so every call goes to 'shut'"
    )


def test_a_long_chain_of_nodes_does_not_hit_the_recursion_limit():
    nodes = {f"step_{i}": say(f"step_{i + 1}") for i in range(3000)}
    nodes["step_3000"] = hangup()
    assert lint(make_flow(nodes, start="step_0")) == []


def test_lint_is_deterministic():
    flow = make_flow(
        {
            "a": goto("b"),
            "b": goto("a"),
            "c": menu({"1": "c", "2": "nowhere"}, "c"),
            "d": authenticate("a", "zed"),
        }
    )
    assert lint(flow) == lint(flow)


# Prompts


def write_catalog(folder, locale, prompts):
    data = {"locale": locale, "voice": "Polly.Joanna-Neural", "language": locale}
    (folder / f"{locale}.yaml").write_text(yaml.safe_dump({**data, "prompts": prompts}))


def record(folder, locale, key):
    path = folder / "audio" / locale / f"{key}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * 8)


ENGLISH = {
    "p.hello": "Hello.",
    "p.bye": "Goodbye.",
    "p.menu": "Press 1.",
    "flow.menu.invalid": "Sorry.",
    "flow.language.option": "For English press {digit}.",
}


@pytest.fixture
def catalog_dir(tmp_path):
    folder = tmp_path / "voice_prompts"
    folder.mkdir()
    write_catalog(folder, "en-US", ENGLISH)
    spanish = {key: f"es: {text}" for key, text in ENGLISH.items() if key != "p.bye"}
    write_catalog(folder, "es-ES", spanish)
    return folder


@pytest.fixture
def catalogs(catalog_dir):
    return PromptCatalogs(catalog_dir, "en-US")


def greeting_flow(**fields):
    return make_flow({"welcome": say("goodbye"), "goodbye": hangup()}, **fields)


def test_a_prompt_missing_in_one_locale_is_a_warning_naming_it(catalogs):
    problem = only(lint(greeting_flow(), catalogs, lines={"goodbye": 3}), "warning")
    assert (
        problem.message == "prompt 'p.bye' is missing in es-ES: callers there hear the en-US text"
    )
    assert (problem.node, problem.line) == ("goodbye", 3)


def test_there_is_one_warning_per_locale_and_key(catalog_dir):
    write_catalog(catalog_dir, "fr-FR", {"p.menu": "Tapez 1."})
    prompts = PromptCatalogs(catalog_dir, "en-US")
    warnings = messages(lint(greeting_flow(), prompts), "warning")
    assert warnings == [
        "prompt 'p.hello' is missing in fr-FR: callers there hear the en-US text",
        "prompt 'p.bye' is missing in es-ES: callers there hear the en-US text",
        "prompt 'p.bye' is missing in fr-FR: callers there hear the en-US text",
    ]


def test_a_key_used_by_several_nodes_is_reported_once(catalogs):
    flow = make_flow({"first": hangup(), "second": hangup()})
    assert len(lint(flow, catalogs)) == 2  # p.bye in es-ES once, and `second` is unreachable


def test_a_prompt_missing_in_the_default_locale_too_is_an_error_with_a_suggestion(catalogs):
    flow = make_flow({"welcome": say("goodbye", prompt="p.helo"), "goodbye": hangup("p.hello")})
    problem = only(lint(flow, catalogs))
    assert problem.message == (
        "prompt 'p.helo' is missing in the default locale en-US and in es-ES, so it cannot be "
        "spoken; did you mean 'p.hello'?"
    )
    assert problem.node == "welcome"


def test_a_flow_with_a_fixed_locale_is_checked_in_the_locales_it_can_reach(catalogs):
    spanish_only = greeting_flow(locale="es-ES")
    # p.bye is missing in es-ES (a warning); en-US is not reachable, so nothing about it.
    assert messages(lint(spanish_only, catalogs)) == [
        "prompt 'p.bye' is missing in es-ES: callers there hear the en-US text"
    ]
    english_only = greeting_flow(locale="en-US")
    assert lint(english_only, catalogs) == []


def test_a_locale_without_a_catalog_is_an_error(catalogs):
    problem = only(lint(greeting_flow(locale="de-DE"), catalogs))
    assert problem.message == "locale de-DE has no prompt catalog (available: en-US, es-ES)"


def choose_language(*locales, prompt="flow.language.option"):
    options = {str(index): locale for index, locale in enumerate(locales, 1)}
    return make_flow(
        {
            "choose": {"type": "language", "prompt": prompt, "options": options, "next": "bye"},
            "bye": hangup("p.hello"),
        },
        locale="en-US",
    )


def test_a_language_option_without_a_catalog_is_an_error(catalogs):
    problem = only(lint(choose_language("en-US", "pt-BR"), catalogs))
    assert problem.message == (
        "option 2 is pt-BR, which has no prompt catalog (available: en-US, es-ES)"
    )
    assert problem.node == "choose"


def test_a_language_prompt_missing_in_its_options_locale_is_a_warning(catalog_dir):
    write_catalog(catalog_dir, "fr-FR", {"p.hello": "Bonjour."})
    prompts = PromptCatalogs(catalog_dir, "en-US")
    problems = lint(choose_language("en-US", "fr-FR"), prompts)
    assert messages(problems) == [
        "option 2 (fr-FR): prompt 'flow.language.option' is missing in fr-FR, so this option "
        "is offered in en-US"
    ]


def test_a_language_prompt_is_only_checked_in_its_options_locales(catalog_dir):
    # de-DE lacks the option prompt, but no option offers German: nothing to say about it.
    write_catalog(catalog_dir, "de-DE", {"p.hello": "Hallo."})
    prompts = PromptCatalogs(catalog_dir, "en-US")
    flow = make_flow(
        {
            "choose": {"type": "language", "options": {"1": "en-US", "2": "es-ES"}, "next": "bye"},
            "bye": hangup("p.hello"),
        }
    )
    assert lint(flow, prompts) == []


def test_a_language_prompt_in_no_catalog_is_an_error(catalogs):
    problem = only(lint(choose_language("es-ES", prompt="p.choose"), catalogs))
    assert problem.message == (
        "option 1 (es-ES): prompt 'p.choose' is missing in es-ES and in the default locale "
        "en-US, so it cannot be spoken"
    )


def test_a_prompt_with_a_placeholder_its_node_does_not_fill_is_an_error(catalog_dir):
    """Found by the flow property tests: a say node speaking a prompt that names {ending}
    (only an authenticate node's "code sent" prompts have it) passed check, then failed every
    call at that node."""
    for locale, text in (("en-US", "Sent to the phone ending {ending}."), ("es-ES", "{ending}")):
        write_catalog(catalog_dir, locale, {**ENGLISH, "p.sent": text})
    prompts = PromptCatalogs(catalog_dir, "en-US")
    flow = make_flow({"welcome": say("goodbye", prompt="p.sent"), "goodbye": hangup("p.hello")})
    problem = only(lint(flow, prompts, lines={"welcome": 4}))
    assert problem.message == (
        "prompt 'p.sent' says {ending}, which a say node does not fill: the call could not go "
        "on past it"
    )
    assert (problem.node, problem.line) == ("welcome", 4)


def test_without_catalogs_prompts_are_not_checked():
    flow = make_flow({"welcome": say("bye", prompt="p.not_anywhere"), "bye": hangup()})
    assert lint(flow) == []


def test_missing_recordings_are_silent_unless_required(catalog_dir):
    record(catalog_dir, "en-US", "p.hello")
    record(catalog_dir, "es-ES", "p.hello")
    prompts = PromptCatalogs(catalog_dir, "en-US")
    flow = greeting_flow(locale="en-US")
    assert lint(flow, prompts) == []
    problem = only(lint(flow, prompts, require_audio=True), "warning")
    assert problem.message == (
        f"no recording in {catalog_dir / 'audio' / 'en-US'}/ for 1 prompt(s) "
        "(text-to-speech instead): p.bye"
    )


def test_required_recordings_are_listed_per_locale_where_the_text_comes_from(catalog_dir):
    prompts = PromptCatalogs(catalog_dir, "en-US")
    problems = lint(greeting_flow(), prompts, require_audio=True)
    recordings = [m for m in messages(problems, "warning") if m.startswith("no recording")]
    # es-ES has no p.bye text, so callers there hear (and would hear recorded) the en-US one.
    assert recordings == [
        f"no recording in {catalog_dir / 'audio' / 'en-US'}/ for 2 prompt(s) "
        "(text-to-speech instead): p.bye, p.hello",
        f"no recording in {catalog_dir / 'audio' / 'es-ES'}/ for 1 prompt(s) "
        "(text-to-speech instead): p.hello",
    ]


@pytest.mark.parametrize(
    ("identity", "warned"),
    [("agent_desk", False), ("agent.desk", True), ("ada@example.com", True), ("desk-1", True)],
)
def test_a_client_identity_mobile_sdks_cannot_ring_is_a_warning(identity, warned):
    flow = make_flow({"desk": {"type": "agent", "prompt": None, "dial": {"client": identity}}})
    found = [p for p in lint(flow) if "iOS and Android" in p.message]
    assert bool(found) is warned
    assert not errors(found), "a browser may still ring: a warning, not an error"
