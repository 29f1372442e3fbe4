"""A flow drawn for people: a text tree for the terminal, Mermaid and Graphviz for diagrams.

All three read the flow in file order, so the same file always gives the same output (diagrams
live in reviews and docs, where a reshuffle would be noise). They draw what the file says, even
branches to nodes that do not exist, since `ivr flows show` is also how one finds those.
"""

from __future__ import annotations

from ivr.flows.lint import is_terminal, reachable
from ivr.flows.model import (
    AgentNode,
    AuthenticateNode,
    CollectNode,
    Flow,
    HangupNode,
    HoursNode,
    IdentifyNode,
    LanguageNode,
    MenuNode,
    Node,
    SayNode,
    TransferNode,
)

MISSING = "no such node"


def summary(node: Node) -> str:
    """What a node does, in a few words: its prompt, queue, number or schedule's zone."""
    if isinstance(node, SayNode):
        return ", ".join(node.prompt)
    if isinstance(node, MenuNode):
        return node.greeting
    if isinstance(node, CollectNode):
        return f"{node.prompt} into {node.store_as}"
    if isinstance(node, IdentifyNode):
        return "caller ID, else account number" if node.use_caller_id else "account number"
    if isinstance(node, AuthenticateNode):
        return {"auto": "code by SMS or call", "sms": "code by SMS", "call": "code by call"}[
            node.channel
        ]
    if isinstance(node, HoursNode):
        return node.timezone
    if isinstance(node, LanguageNode):
        return ", ".join(f"{key} {locale}" for key, locale in node.options.items())
    if isinstance(node, AgentNode):
        if node.queue is not None:
            return f"queue {node.queue}"
        target = node.dial
        assert target is not None  # the model requires queue or dial
        return f"dial {target.number or target.sip or target.client}"
    if isinstance(node, TransferNode):
        return f"to {node.to_number}" if node.to_number else f"to flow {node.to_flow}"
    if isinstance(node, HangupNode):
        return node.prompt or ""
    return ""


def _missing(flow: Flow) -> list[str]:
    """Ids that start, on_error or a branch name but no node has, in order of first mention."""
    named = [flow.start, flow.on_error or flow.start]
    named += [target for node in flow.nodes.values() for target in node.exits().values()]
    return list(dict.fromkeys(target for target in named if target not in flow.nodes))


def _label_lines(node_id: str, node: Node) -> list[str]:
    lines = [node_id, f"({node.type})"]
    if detail := summary(node):
        lines.append(detail)
    if node.description:
        lines.append(" ".join(node.description.split()))
    return lines


# -- text ------------------------------------------------------------------------------------


def _headline(node_id: str, node: Node) -> str:
    detail = summary(node)
    text = f"{node_id} ({node.type}: {detail})" if detail else f"{node_id} ({node.type})"
    if node.description:
        text += " - " + " ".join(node.description.split())
    return text


def as_text_tree(flow: Flow) -> str:
    """The flow from start as an indented tree, each branch with its label. A node met again
    is a reference (`-> main_menu (see above)`), so loops print once; the on_error node and
    unreachable nodes follow."""
    lines: list[str] = []
    seen: set[str] = set()

    def tree(root: str, title: str) -> None:
        # Iterative: a long chain of nodes must not hit Python's recursion limit.
        stack: list[tuple[str, str, str, str]] = [(root, title, "", "")]
        while stack:
            node_id, label, lead, indent = stack.pop()
            node = flow.nodes.get(node_id)
            if node is None:
                lines.append(f"{lead}{label}: -> {node_id} ({MISSING})")
                continue
            if node_id in seen:
                lines.append(f"{lead}{label}: -> {node_id} (see above)")
                continue
            seen.add(node_id)
            lines.append(f"{lead}{label}: {_headline(node_id, node)}")
            branches = list(node.exits().items())
            children = []
            for index, (branch, target) in enumerate(branches):
                last = index == len(branches) - 1
                children.append(
                    (
                        target,
                        branch,
                        indent + ("└── " if last else "├── "),
                        indent + ("    " if last else "│   "),
                    )
                )
            stack.extend(reversed(children))

    tree(flow.start, "start")
    if flow.on_error:
        tree(flow.on_error, "on error")
    unreachable = [node_id for node_id in flow.nodes if node_id not in seen]
    if unreachable:
        lines.append("")
        lines.append(f"not reachable from start ({len(unreachable)}):")
        for node_id in unreachable:
            node = flow.nodes[node_id]
            exits = ", ".join(f"{branch} -> {target}" for branch, target in node.exits().items())
            lines.append(f"  {_headline(node_id, node)}" + (f": {exits}" if exits else ""))
    return "\n".join(lines) + "\n"


# -- Mermaid ---------------------------------------------------------------------------------

# Characters Mermaid would read as syntax (or HTML) inside a quoted label, as its entity codes.
# Text is escaped character by character, so the '#' of a code is never escaped again.
_MERMAID_ESCAPES = {char: f"#{ord(char)};" for char in '#"<>&`|'}


def _mermaid_text(text: str) -> str:
    return "".join(_MERMAID_ESCAPES.get(char, " " if char.isspace() else char) for char in text)


def _mermaid_id(node_id: str) -> str:
    # A prefix keeps flow ids clear of Mermaid keywords ("end", "graph", "style"...) and of the
    # start and on-error markers.
    return f"n_{node_id}"


def _mermaid_shape(node: Node | None, label: str) -> str:
    if node is not None and node.waits_for_keys:
        return f'{{"{label}"}}'
    if node is not None and is_terminal(node):
        return f'(["{label}"])'
    return f'["{label}"]'


def as_mermaid(flow: Flow) -> str:
    """A Mermaid `flowchart TD`: nodes that wait for the caller as rhombi, nodes that end the
    flow's part of the call as stadiums, the rest as rectangles; edges carry branch labels.
    Unreachable nodes are dashed; branches to missing nodes end in a red placeholder."""
    lines = ["flowchart TD", '    s_start(("start"))']
    missing = _missing(flow)
    for node_id, node in flow.nodes.items():
        label = "<br/>".join(_mermaid_text(line) for line in _label_lines(node_id, node))
        lines.append(f"    {_mermaid_id(node_id)}{_mermaid_shape(node, label)}")
    for node_id in missing:
        label = f"{_mermaid_text(node_id)}<br/>({MISSING})"
        lines.append(f"    {_mermaid_id(node_id)}{_mermaid_shape(None, label)}")
    lines.append(f"    s_start --> {_mermaid_id(flow.start)}")
    if flow.on_error:
        lines.append('    s_error(("on error"))')
        lines.append(f"    s_error -.-> {_mermaid_id(flow.on_error)}")
    for node_id, node in flow.nodes.items():
        for branch, target in node.exits().items():
            lines.append(
                f'    {_mermaid_id(node_id)} -->|"{_mermaid_text(branch)}"| {_mermaid_id(target)}'
            )
    found = reachable(flow)
    unreachable = [node_id for node_id in flow.nodes if node_id not in found]
    if unreachable:
        lines.append("    classDef unreachable stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(map(_mermaid_id, unreachable))} unreachable")
    if missing:
        lines.append("    classDef missing stroke:#d00,color:#d00")
        lines.append(f"    class {','.join(map(_mermaid_id, missing))} missing")
    return "\n".join(lines) + "\n"


# -- Graphviz --------------------------------------------------------------------------------


def _dot_text(text: str) -> str:
    """A DOT quoted string's content: backslashes and quotes escaped (a lone backslash would
    start an escape like \\N, the node's name), line breaks as DOT's `\\n`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "\\n".join(escaped.splitlines())


def _dot_shape(node: Node | None) -> str:
    if node is None:
        return "shape=box, style=dashed, color=red, fontcolor=red"
    if node.waits_for_keys:
        return "shape=diamond"
    if is_terminal(node):
        return 'shape=box, style="rounded"'
    return "shape=box"


def as_dot(flow: Flow) -> str:
    """A Graphviz digraph with the same nodes, shapes and labelled edges as `as_mermaid`.
    Node ids are quoted as they are, so the markers use names no flow id can have."""
    lines = [
        f'digraph "{_dot_text(flow.name)}" {{',
        "    rankdir=TB;",
        '    node [fontname="Helvetica"];',
        '    edge [fontname="Helvetica"];',
        '    "(start)" [shape=circle, label="start"];',
    ]
    found = reachable(flow)
    for node_id, node in flow.nodes.items():
        label = "\\n".join(_dot_text(line) for line in _label_lines(node_id, node))
        attributes = f'label="{label}", {_dot_shape(node)}'
        if node_id not in found:
            attributes += ', color="gray50"'
        lines.append(f'    "{_dot_text(node_id)}" [{attributes}];')
    missing = _missing(flow)
    for node_id in missing:
        label = f"{_dot_text(node_id)}\\n({MISSING})"
        lines.append(f'    "{_dot_text(node_id)}" [label="{label}", {_dot_shape(None)}];')
    lines.append(f'    "(start)" -> "{_dot_text(flow.start)}";')
    if flow.on_error:
        lines.append('    "(on error)" [shape=circle, label="on error"];')
        lines.append(f'    "(on error)" -> "{_dot_text(flow.on_error)}" [style=dashed];')
    for node_id, node in flow.nodes.items():
        for branch, target in node.exits().items():
            lines.append(
                f'    "{_dot_text(node_id)}" -> "{_dot_text(target)}" '
                f'[label="{_dot_text(branch)}"];'
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = ["as_dot", "as_mermaid", "as_text_tree", "summary"]
