"""Flow files on disk: errors with their lines, reloading, the last good version."""

from __future__ import annotations

import pytest

from ivr.flows.loader import FlowFileError, FlowLibrary, parse_flow_file

HANGUP = "start: bye\nnodes:\n  bye: {type: hangup}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(folder, name, text):
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path) -> list[str]:
    with pytest.raises(FlowFileError) as caught:
        parse_flow_file(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("text", "place", "says"),
    [
        (  # the '{' that is never closed, not the end of the file where PyYAML notices
            "start: bye\nnodes:\n  bye: {type: hangup\n",
            "3:8",
            "a '{' opened here is not closed by '}'",
        ),
        (  # the key without its ':', not the next line
            "start: bye\nnodes\n  bye: {type: hangup}\n",
            "2:1",
            "this line has a setting name but no ':' after it (write 'name: value')",
        ),
        (
            "start: bye\ndescription: Press 1: sales\nnodes:\n  bye: {type: hangup}\n",
            "2:21",
            "a ':' inside a value: put the value in quotes if it holds ': '",
        ),
        (
            "start: bye\nnodes:\n  bye:\n    type: hangup\n     prompt: bye\n",
            "5:12",
            "or this line is indented more than the settings beside it",
        ),
        (
            "start: bye\nnodes:\n    bye:\n      type: hangup\n  other: {type: hangup}\n",
            "5:3",
            "this line is indented differently from the settings beside it",
        ),
        ("start: bye\nnodes:\n\tbye: {type: hangup}\n", "3:1", "a tab: YAML indents with spaces"),
        ('start: bye\ndescription: "oops\nnodes: {}\n', "2:14", "a quote opened here is never"),
        ("description: 'it's'\n" + HANGUP, "1:18", "double it ('it''s')"),
        ("start: @bye\n", "1:8", "a value cannot start with '@': put the value in quotes"),
        (  # PyYAML would keep the second silently: the first node would be lost
            "start: bye\nnodes:\n  bye: {type: hangup}\n  bye: {type: say, prompt: x}\n",
            "4:3",
            "'bye' is given twice (first on line 3): keep one",
        ),
        (  # a menu key written twice
            "start: m\nnodes:\n  m:\n    type: menu\n    options: {1: a, 2: b, 1: c}\n",
            "5:27",
            "1 is given twice (first on line 5): keep one",
        ),
    ],
)
def test_a_yaml_syntax_error_is_said_plainly_where_the_mistake_is(tmp_path, text, place, says):
    path = write(tmp_path, "broken", text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:{place}: error: not valid YAML: ")
    assert says in problem
    for jargon in ("while scanning", "while parsing", "could not find expected", "<block end>"):
        assert jargon not in problem


@pytest.mark.parametrize("text", ["", "- a list\n", "just words\n"])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text):
    [problem] = problems_of(write(tmp_path, "odd", text))
    assert "a flow file is a mapping" in problem


def test_the_name_inside_must_match_the_file_name(tmp_path):
    [problem] = problems_of(write(tmp_path, "sales", "name: support\n" + HANGUP))
    assert problem.endswith("name 'support' differs from the file name 'sales'")
    assert ":1: error" in problem


def test_schema_errors_point_at_their_lines(tmp_path):
    text = "start: bye\nnodes:\n  bye:\n    type: hangup\n  menu:\n    type: menu\n    greting: x\n"
    problems = problems_of(write(tmp_path, "f", text))
    assert any(
        p.endswith(":7: error: nodes.menu.greting: unknown setting; did you mean 'greeting'?")
        for p in problems
    )
    assert any("nodes.menu.greeting: Field required" in p for p in problems)
    unknown_type = problems_of(write(tmp_path, "g", "start: a\nnodes:\n  a: {type: dance}\n"))
    assert "unknown node type; expected one of:" in unknown_type[0]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (  # a top-level setting
            "numbrs: []\n" + HANGUP,
            "numbrs: unknown setting; did you mean 'numbers'?",
        ),
        (  # one of a nested setting (an agent's dial)
            "start: a\nnodes:\n  a:\n    type: agent\n    dial: {numbr: '+14155550100'}\n",
            "nodes.a.dial.numbr: unknown setting; did you mean 'number'?",
        ),
        (  # nothing close: the settings this node type takes
            "start: bye\nnodes:\n  bye: {type: hangup, zzz: 1}\n",
            "nodes.bye.zzz: unknown setting; the settings here are: description, type, prompt",
        ),
    ],
)
def test_an_unknown_setting_suggests_the_one_meant(tmp_path, text, says):
    assert any(p.endswith(says) for p in problems_of(write(tmp_path, "f", text)))


def test_the_library_picks_flows_by_called_number_then_the_default(tmp_path):
    write(tmp_path, "sales", 'numbers: ["+14155550188"]\n' + HANGUP)
    write(tmp_path, "main", "default: true\n" + HANGUP)
    library = FlowLibrary(tmp_path)
    assert library.for_number("+14155550188").name == "sales"
    assert library.for_number("+14155550100").name == "main"


def test_without_a_default_a_flow_named_default_answers(tmp_path):
    write(tmp_path, "default", HANGUP)
    write(tmp_path, "sales", 'numbers: ["+14155550188"]\n' + HANGUP)
    assert FlowLibrary(tmp_path).for_number("+1999").name == "default"
    (tmp_path / "default.yaml").unlink()
    assert FlowLibrary(tmp_path).for_number("+1999") is None


def test_changes_are_read_once_the_interval_has_passed(tmp_path):
    clock = Clock()
    write(tmp_path, "main", "default: true\n" + HANGUP)
    library = FlowLibrary(tmp_path, clock=clock)
    write(tmp_path, "extra", 'numbers: ["+14155550188"]\n' + HANGUP)
    assert library.get("extra") is None, "not looked at again within the interval"
    clock.now = 1.5
    assert library.get("extra") is not None
    (tmp_path / "extra.yaml").unlink()
    clock.now = 3.0
    assert library.get("extra") is None, "a removed file is no longer served"


def test_a_broken_new_file_is_not_served_and_a_broken_edit_keeps_the_last_good(tmp_path):
    clock = Clock()
    path = write(tmp_path, "main", "default: true\n" + HANGUP)
    library = FlowLibrary(tmp_path, clock=clock)
    write(tmp_path, "new", "start: [\n")
    path.write_text("default: true\nstart: bye\nnodes: {}\n", encoding="utf-8")
    clock.now = 2.0
    assert library.get("new") is None
    assert library.get("main").nodes["bye"].type == "hangup", "the last good version"
    assert set(library.refused) == {tmp_path / "new.yaml", path}
    path.write_text("default: true\n" + HANGUP.replace("bye", "end"), encoding="utf-8")
    clock.now = 4.0
    assert "end" in library.get("main").nodes
    assert set(library.refused) == {tmp_path / "new.yaml"}


def test_a_missing_folder_serves_nothing_and_does_not_fail(tmp_path):
    library = FlowLibrary(tmp_path / "absent")
    assert library.flows == {}
    assert library.for_number("+14155550100") is None


AGENT = (
    "start: desk\nnodes:\n  desk:\n    type: agent\n"
    "    dial: {{{dial}}}\n    attributes: {{{attributes}}}\n"
)


@pytest.mark.parametrize(
    ("dial", "attributes", "says"),
    [
        ('sip: "sip:q@pbx.example.com"', '"first name": Ada', "attributes.first name"),
        ('sip: "sip:q@pbx.example.com"', "skill: cards, Straße: x", "attributes.Straße"),
        ("client: desk", "verified: 'true'", "verified is set by the IVR"),
        ('sip: "sip:q@pbx.example.com", caller_id: "+14155550100"', "", "caller_id goes with"),
    ],
)
def test_agent_hand_offs_refuse_what_twilio_would(tmp_path, dial, attributes, says):
    """Attribute names become SIP header names (a space or a non-ASCII letter: Twilio 13252);
    the IVR's own names cannot be overridden; caller_id is for a number leg only."""
    path = write(tmp_path, "handoff", AGENT.format(dial=dial, attributes=attributes))
    found = problems_of(path)
    assert any(says in problem for problem in found), found
    assert all(f"{path}:" in problem for problem in found), "each with its line"
