"""Drawing flows: the text tree, Mermaid and Graphviz carry every node and branch, escape what
the team writes, and give the same output for the same file."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ivr.flows.model import Flow
from ivr.flows.render import as_dot, as_mermaid, as_text_tree

NODES = {
    "welcome": {"type": "say", "prompt": "flow.welcome", "next": "main_menu"},
    "main_menu": {
        "type": "menu",
        "greeting": "flow.main_menu.long",
        "options": {"1": "who", "2": "info", "#": "main_menu"},
        "exit": "goodbye",
    },
    "info": {"type": "say", "prompt": ["flow.info", "flow.more"], "next": "back"},
    "back": {"type": "goto", "target": "main_menu"},
    "who": {"type": "identify", "found": "verify", "not_found": "desk"},
    "verify": {"type": "authenticate", "success": "desk", "failure": "goodbye"},
    "desk": {
        "type": "agent",
        "queue": "support",
        "description": 'Says "verified" & the id; #1 <b>team</b> C:\\agents | all',
    },
    "goodbye": {"type": "hangup", "prompt": "flow.goodbye"},
    "orphan": {"type": "transfer", "to_number": "+18005550199"},
}


def make_flow(nodes=None, **fields):
    nodes = NODES if nodes is None else nodes
    data = {"name": "sample", "start": next(iter(nodes)), "nodes": nodes, **fields}
    return Flow.model_validate(data)


EDGES = [
    ("welcome", "next", "main_menu"),
    ("main_menu", "key 1", "who"),
    ("main_menu", "key 2", "info"),
    ("main_menu", "key #", "main_menu"),
    ("main_menu", "exit", "goodbye"),
    ("info", "next", "back"),
    ("back", "goto", "main_menu"),
    ("who", "found", "verify"),
    ("who", "not found", "desk"),
    ("verify", "verified", "desk"),
    ("verify", "not verified", "goodbye"),
]


# Text tree


def test_the_text_tree_shows_the_flow_from_start_with_branch_labels():
    assert as_text_tree(make_flow()) == (
        "start: welcome (say: flow.welcome)\n"
        "└── next: main_menu (menu: flow.main_menu.long)\n"
        "    ├── key 1: who (identify: caller ID, else account number)\n"
        "    │   ├── found: verify (authenticate: code by SMS or call)\n"
        '    │   │   ├── verified: desk (agent: queue support) - Says "verified" & the id; '
        "#1 <b>team</b> C:\\agents | all\n"
        "    │   │   └── not verified: goodbye (hangup: flow.goodbye)\n"
        "    │   └── not found: -> desk (see above)\n"
        "    ├── key 2: info (say: flow.info, flow.more)\n"
        "    │   └── next: back (goto)\n"
        "    │       └── goto: -> main_menu (see above)\n"
        "    ├── key #: -> main_menu (see above)\n"
        "    └── exit: -> goodbye (see above)\n"
        "\n"
        "not reachable from start (1):\n"
        "  orphan (transfer: to +18005550199)\n"
    )


def test_the_text_tree_prints_each_node_once_and_refers_back_after():
    tree = as_text_tree(make_flow())
    for node_id in NODES:
        expanded = [line for line in tree.splitlines() if re.search(rf"(: |^  ){node_id} \(", line)]
        assert len(expanded) == 1, (node_id, expanded)


def test_the_text_tree_shows_on_error_and_missing_nodes():
    nodes = {
        "main_menu": {
            "type": "menu",
            "greeting": "flow.main_menu.long",
            "options": {"1": "acount_help"},
            "exit": "bye",
        },
        "bye": {"type": "hangup"},
        "desk": {
            "type": "agent",
            "dial": {"number": "+18005550100"},
            "no_answer": "bye",
        },
    }
    assert as_text_tree(make_flow(nodes, on_error="desk")) == (
        "start: main_menu (menu: flow.main_menu.long)\n"
        "├── key 1: -> acount_help (no such node)\n"
        "└── exit: bye (hangup)\n"
        "on error: desk (agent: dial +18005550100)\n"
        "└── no answer: -> bye (see above)\n"
    )


def test_unreachable_nodes_are_listed_with_their_branches():
    nodes = {
        "bye": {"type": "hangup"},
        "lost": {"type": "say", "prompt": "flow.lost", "next": "bye"},
    }
    assert as_text_tree(make_flow(nodes)).endswith(
        "not reachable from start (1):\n  lost (say: flow.lost): next -> bye\n"
    )


def test_a_long_chain_of_nodes_draws_without_hitting_the_recursion_limit():
    nodes = {f"step_{i}": {"type": "goto", "target": f"step_{i + 1}"} for i in range(3000)}
    nodes["step_3000"] = {"type": "hangup"}
    flow = make_flow(nodes)
    assert as_text_tree(flow).count("\n") == 3001
    assert as_mermaid(flow)
    assert as_dot(flow)


# Mermaid

_MERMAID_NODE = re.compile(r'^    (n_\w+)(\[|\{|\(\[)"([^"]*)"(\]|\}|\]\))$')
_MERMAID_EDGE = re.compile(r'^    (n_\w+) -->\|"([^"]*)"\| (n_\w+)$')


def mermaid_parts(text):
    nodes, edges = {}, []
    for line in text.splitlines():
        if match := _MERMAID_NODE.match(line):
            assert match.group(1) not in nodes, f"{match.group(1)} declared twice"
            nodes[match.group(1)] = (match.group(2) + match.group(4), match.group(3))
        elif match := _MERMAID_EDGE.match(line):
            edges.append((match.group(1), match.group(2), match.group(3)))
    return nodes, edges


def test_mermaid_is_a_top_down_flowchart_with_a_start_marker():
    text = as_mermaid(make_flow())
    assert text.startswith("flowchart TD\n")
    assert "    s_start --> n_welcome\n" in text


def test_mermaid_has_every_node_with_its_shape_and_every_branch_with_its_label():
    nodes, edges = mermaid_parts(as_mermaid(make_flow()))
    assert set(nodes) == {f"n_{node_id}" for node_id in NODES}
    shapes = {node_id[2:]: shape for node_id, (shape, _) in nodes.items()}
    assert shapes == {
        "welcome": "[]",
        "info": "[]",
        "back": "[]",
        "main_menu": "{}",  # waits for the caller
        "who": "{}",
        "verify": "{}",
        "desk": "([])",  # ends the flow's part of the call
        "goodbye": "([])",
        "orphan": "([])",
    }
    assert edges == [
        (f"n_{source}", label.replace("#", "#35;"), f"n_{target}")
        for source, label, target in EDGES
    ]


def test_mermaid_labels_carry_id_type_and_what_the_node_does():
    nodes, _ = mermaid_parts(as_mermaid(make_flow()))
    assert nodes["n_main_menu"][1] == "main_menu<br/>(menu)<br/>flow.main_menu.long"
    assert nodes["n_desk"][1].startswith("desk<br/>(agent)<br/>queue support<br/>")


def test_mermaid_labels_escape_quotes_and_markup():
    nodes, _ = mermaid_parts(as_mermaid(make_flow()))
    description = nodes["n_desk"][1].split("<br/>")[-1]
    assert description == (
        "Says #34;verified#34; #38; the id; #35;1 #60;b#62;team#60;/b#62; C:\\agents #124; all"
    )


def test_mermaid_ids_cannot_collide_with_keywords_or_markers():
    nodes = {
        "end": {"type": "goto", "target": "s_start"},
        "s_start": {"type": "hangup"},
    }
    text = as_mermaid(make_flow(nodes))
    assert '    n_end -->|"goto"| n_s_start\n' in text
    assert "    s_start --> n_end\n" in text


def test_mermaid_marks_unreachable_and_missing_nodes():
    nodes = {
        "main_menu": {
            "type": "menu",
            "greeting": "flow.menu",
            "options": {"1": "nowhere"},
            "exit": "bye",
        },
        "bye": {"type": "hangup"},
        "lost": {"type": "hangup"},
    }
    text = as_mermaid(make_flow(nodes))
    assert '    n_nowhere["nowhere<br/>(no such node)"]\n' in text
    assert "    class n_lost unreachable\n" in text
    assert "    class n_nowhere missing\n" in text


def test_mermaid_shows_where_errors_go():
    text = as_mermaid(make_flow(on_error="desk"))
    assert '    s_error(("on error"))\n    s_error -.-> n_desk\n' in text


# Graphviz

_DOT_NODE = re.compile(r'^    "(\w+)" \[label="((?:[^"\\]|\\.)*)", (.*)\];$')
_DOT_EDGE = re.compile(r'^    "(\w+)" -> "(\w+)" \[label="((?:[^"\\]|\\.)*)"\];$')


def dot_parts(text):
    nodes, edges = {}, []
    for line in text.splitlines():
        if match := _DOT_NODE.match(line):
            assert match.group(1) not in nodes
            nodes[match.group(1)] = (match.group(2), match.group(3))
        elif match := _DOT_EDGE.match(line):
            source, target, label = match.groups()
            edges.append((source, label, target))
    return nodes, edges


def test_dot_is_a_digraph_named_after_the_flow():
    text = as_dot(make_flow())
    assert text.startswith('digraph "sample" {\n')
    assert text.endswith("}\n")
    assert '    "(start)" -> "welcome";\n' in text


def test_dot_has_every_node_with_its_shape_and_every_branch_with_its_label():
    nodes, edges = dot_parts(as_dot(make_flow()))
    assert set(nodes) == set(NODES)
    assert nodes["main_menu"] == ("main_menu\\n(menu)\\nflow.main_menu.long", "shape=diamond")
    assert nodes["welcome"][1] == "shape=box"
    assert nodes["goodbye"][1] == 'shape=box, style="rounded"'
    assert nodes["orphan"][1] == 'shape=box, style="rounded", color="gray50"'  # unreachable
    assert edges == EDGES


def test_dot_labels_escape_quotes_and_backslashes():
    nodes, _ = dot_parts(as_dot(make_flow()))
    description = nodes["desk"][0].split("\\n")[-1]
    assert description == 'Says \\"verified\\" & the id; #1 <b>team</b> C:\\\\agents | all'


def test_dot_draws_missing_nodes_in_red():
    nodes = {"first": {"type": "goto", "target": "gone"}}
    text = as_dot(make_flow(nodes))
    assert '"gone" [label="gone\\n(no such node)", shape=box, style=dashed, color=red' in text


# Every format


@pytest.mark.parametrize("render", [as_text_tree, as_mermaid, as_dot])
def test_the_same_flow_always_draws_the_same(render):
    assert render(make_flow()) == render(make_flow())
    assert render(make_flow()) == render(Flow.model_validate(make_flow().model_dump()))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_reads_the_dot_output():
    result = subprocess.run(
        ["dot", "-Tsvg"],  # noqa: S607 - whichever dot is on PATH, as a user would run it
        input=as_dot(make_flow(on_error="desk")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
