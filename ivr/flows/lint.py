"""Lint for flow files: what the schema cannot see because it spans nodes, flows or catalogs.

The schema checks each node on its own. Lint reads the flow as a graph, the way the engine walks
it: does every branch lead to a node, can every call end, can the engine go round nodes without
ever waiting for the caller (it would give up after MAX_HOPS and take on_error), is a code ever
sent before anyone is identified. Then against the prompt catalogs: can every prompt be spoken
in every language a caller can reach. Errors keep a flow from serving; warnings do not.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Collection, Iterable, Mapping

from ivr.flows.hours import weekly_ranges
from ivr.flows.model import (
    AgentNode,
    AuthenticateNode,
    Flow,
    GotoNode,
    HangupNode,
    HoursNode,
    IdentifyNode,
    LanguageNode,
    MenuNode,
    Node,
    SayNode,
    TransferNode,
)
from ivr.flows.problems import Problem, Severity, did_you_mean
from ivr.prompts import PromptCatalogs

TERMINAL_TYPES = (AgentNode, TransferNode, HangupNode)
_ENDINGS = "an agent, transfer or hangup node"

Graph = dict[str, list[str]]  # node id -> the ids its branches name (known or not)


def is_terminal(node: Node) -> bool:
    """Whether the node hands the call over or ends it (this flow's part of the call is over)."""
    return isinstance(node, TERMINAL_TYPES)


def graph(flow: Flow) -> Graph:
    """Node id -> the ids of its branches, in the order the node lists them."""
    return {node_id: list(node.exits().values()) for node_id, node in flow.nodes.items()}


def reachable(flow: Flow) -> set[str]:
    """Nodes a call can get to: from start, or from on_error (where a failed turn goes)."""
    sources = [node for node in (flow.start, flow.on_error) if node in flow.nodes]
    return set(_search(graph(flow), sources))


def lint(
    flow: Flow,
    prompts: PromptCatalogs | None = None,
    *,
    flow_names: Collection[str] | None = None,
    file: str = "",
    lines: Mapping[str, int] | None = None,
    require_audio: bool = False,
) -> list[Problem]:
    """Every problem found in a schema-valid flow, in a stable order.

    `flow_names` are the flows a transfer may name (unchecked when None); `lines` maps node ids
    to their line in the file; `require_audio` warns, per locale, of prompts with no recording.
    """
    report = _Report(file, lines or {})
    _check_references(flow, report, flow_names)
    _check_loops_without_a_question(flow, report)
    _check_ways_out(flow, report)
    _check_identified_before_authenticate(flow, report)
    _check_menus_let_silent_callers_go(flow, report)
    _check_on_error(flow, report)
    _check_hours(flow, report)
    _check_client_identities(flow, report)
    _check_unreachable(flow, report)
    if prompts is not None:
        _check_prompts(flow, prompts, report, require_audio)
    return report.problems


class _Report:
    """Collects problems, placing each on its node's line."""

    def __init__(self, file: str, lines: Mapping[str, int]):
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, severity: Severity, message: str, node: str | None = None) -> None:
        line = self.lines.get(node) if node else None
        self.problems.append(Problem(severity, message, self.file, line, node))

    def error(self, message: str, node: str | None = None) -> None:
        self.add("error", message, node)

    def warning(self, message: str, node: str | None = None) -> None:
        self.add("warning", message, node)


# -- names -----------------------------------------------------------------------------------


def _branch(label: str) -> str:
    """A branch as the team wrote it: `option 3`, `next`, `the 'not found' branch`."""
    if label.startswith("key "):
        return f"option {label[4:]}"
    if label == "goto":
        return "target"
    if label in ("next", "exit"):
        return label
    return f"the {label!r} branch"


def _check_references(flow: Flow, report: _Report, flow_names: Collection[str] | None) -> None:
    nodes = flow.nodes
    if flow.start not in nodes:
        report.error(f"start {flow.start!r} is not a node{did_you_mean(flow.start, nodes)}")
    if flow.on_error and flow.on_error not in nodes:
        hint = did_you_mean(flow.on_error, nodes)
        report.error(f"on_error {flow.on_error!r} is not a node{hint}")
    for node_id, node in nodes.items():
        for label, target in node.exits().items():
            if target not in nodes:
                report.error(
                    f"{_branch(label)} goes to {target!r}, which is not a node"
                    + did_you_mean(target, nodes),
                    node_id,
                )
        if (
            isinstance(node, TransferNode)
            and node.to_flow
            and flow_names is not None
            and node.to_flow not in flow_names
        ):
            report.error(
                f"transfer to flow {node.to_flow!r}, which is not a flow file"
                + did_you_mean(node.to_flow, flow_names),
                node_id,
            )


# -- the graph -------------------------------------------------------------------------------


def _search(
    edges: Graph, sources: Iterable[str], allowed: Collection[str] | None = None
) -> dict[str, str | None]:
    """Breadth-first from `sources` over known nodes (only `allowed` ones, when given):
    every node found -> the node it was first reached from (None for a source)."""
    parents: dict[str, str | None] = {}
    queue: deque[str] = deque()
    for source in sources:
        if source in edges and source not in parents:
            parents[source] = None
            queue.append(source)
    while queue:
        current = queue.popleft()
        for target in edges[current]:
            if target in edges and target not in parents and (allowed is None or target in allowed):
                parents[target] = current
                queue.append(target)
    return parents


def _path_to(parents: Mapping[str, str | None], node: str) -> list[str]:
    path = [node]
    while (parent := parents[path[-1]]) is not None:
        path.append(parent)
    return path[::-1]


def _components(edges: Graph) -> list[list[str]]:
    """Strongly connected components (Kosaraju, without recursion: a long chain of nodes must
    not hit Python's recursion limit), each in flow order, ordered by their first node."""
    order: list[str] = []
    seen: set[str] = set()
    for root in edges:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(edges[root]))]
        while stack:
            current, targets = stack[-1]
            for target in targets:
                if target in edges and target not in seen:
                    seen.add(target)
                    stack.append((target, iter(edges[target])))
                    break
            else:
                stack.pop()
                order.append(current)
    reverse = _reversed(edges)
    position = {node: index for index, node in enumerate(edges)}
    assigned: set[str] = set()
    components = []
    for root in reversed(order):
        if root in assigned:
            continue
        members = set(_search(reverse, [root], allowed=set(edges) - assigned))
        assigned |= members
        components.append(sorted(members, key=position.__getitem__))
    return sorted(components, key=lambda members: position[members[0]])


def _reversed(edges: Graph) -> Graph:
    """The same graph with every known branch turned round."""
    reverse: Graph = {node: [] for node in edges}
    for node, targets in edges.items():
        for target in targets:
            if target in reverse:
                reverse[target].append(node)
    return reverse


def _has_cycle(edges: Graph, members: list[str]) -> bool:
    return len(members) > 1 or members[0] in edges[members[0]]


def _cycle(edges: Graph, members: list[str]) -> list[str]:
    """A shortest way round from the component's first node back to it."""
    first, inside = members[0], set(members)
    parents: dict[str, str | None] = {first: None}
    queue = deque([first])
    while queue:
        current = queue.popleft()
        for target in edges[current]:
            if target == first:
                return [*_path_to(parents, current), first]
            if target in inside and target not in parents:
                parents[target] = current
                queue.append(target)
    return members  # unreachable for a component with a cycle


def _arrows(path: Iterable[str]) -> str:
    return " -> ".join(path)


# -- loops, ways out, order ------------------------------------------------------------------


def _moves_on_without_asking(flow: Flow, node: Node) -> tuple[list[str], str | None]:
    """Where the engine may go from `node` within the same turn, without the caller's input,
    and the condition when that is not always so (None: always)."""
    if isinstance(node, SayNode | GotoNode | HoursNode):
        return list(node.exits().values()), None
    if isinstance(node, TransferNode) and node.to_flow == flow.name:
        return [flow.start], None
    if isinstance(node, IdentifyNode) and node.use_caller_id:
        return [node.found], "finds the caller by caller ID"
    if isinstance(node, AuthenticateNode):
        return [node.success, node.failure], "has verified the caller already or cannot send a code"
    return [], None


def _check_loops_without_a_question(flow: Flow, report: _Report) -> None:
    """A cycle the engine can go round in one turn is a call that spins until MAX_HOPS."""
    moves: Graph = {}
    conditions: dict[str, str] = {}
    for node_id, node in flow.nodes.items():
        moves[node_id], condition = _moves_on_without_asking(flow, node)
        if condition:
            conditions[node_id] = condition
    for members in _components(moves):
        if not _has_cycle(moves, members):
            continue
        way_round = _arrows(_cycle(moves, members))
        when = [f"{node} {conditions[node]}" for node in members if node in conditions]
        if not when:
            report.error(
                f"loop without a question: {way_round}; the call would go round it without "
                "ever waiting for the caller (add a menu, or a way out)",
                members[0],
            )
        else:
            report.warning(
                f"possible loop without a question: {way_round}; when {' or '.join(when)}, "
                "the call goes round it without waiting for the caller",
                members[0],
            )


def _trapped(flow: Flow) -> set[str]:
    """Nodes a call can reach but from which no path leads to a node that hands the call over
    or hangs up. A branch to an unknown node counts as a way out here (it is an error of its
    own), so one typo is reported once."""
    edges = graph(flow)
    endings = [
        node_id
        for node_id, node in flow.nodes.items()
        if is_terminal(node) or any(target not in flow.nodes for target in edges[node_id])
    ]
    return reachable(flow) - set(_search(_reversed(edges), endings))


def _check_ways_out(flow: Flow, report: _Report) -> None:
    """Every call must be able to end. Each closed group of trapped nodes is reported once, at
    the menu (or other question) that keeps the caller in it."""
    trapped = _trapped(flow)
    if flow.start in trapped:
        report.error(
            f"no call can ever end: nothing reachable from start {flow.start!r} leads to "
            f"{_ENDINGS}",
            flow.start,
        )
    edges = graph(flow)
    trapped_edges = {node: edges[node] for node in flow.nodes if node in trapped}
    for members in _components(trapped_edges):
        inside = set(members)
        if any(target not in inside for node in members for target in edges[node]):
            continue  # it leads on to other trapped nodes: the problem is reported there
        asking = [node for node in members if flow.nodes[node].waits_for_keys]
        if not asking:
            continue  # say/goto/hours going round: a loop without a question, reported
        menus = [node for node in asking if isinstance(flow.nodes[node], MenuNode)]
        names = ", ".join(members)
        if menus:
            message = (
                f"menu without a way out: every option and the exit lead back into {names}; "
                f"nothing there reaches {_ENDINGS}"
            )
        else:
            message = (
                f"no way out: {names} only lead to each other; nothing there reaches {_ENDINGS}"
            )
        report.error(message, (menus or asking)[0])


def _check_identified_before_authenticate(flow: Flow, report: _Report) -> None:
    """An authenticate node sends the code to the customer's phone on file, so a customer must
    be known: every path to it must pass an identify node's `found` branch. That is a plain
    search that does not take `found` branches: whatever it reaches has a path without one."""
    edges = graph(flow)
    for node_id, node in flow.nodes.items():
        if isinstance(node, IdentifyNode):
            edges[node_id] = [node.not_found]
    parents = _search(edges, [node for node in (flow.start, flow.on_error) if node])
    for node_id, node in flow.nodes.items():
        if isinstance(node, AuthenticateNode) and node_id in parents:
            report.error(
                f"reached with nobody identified ({_arrows(_path_to(parents, node_id))}): "
                "put an identify node before it and continue from its found branch",
                node_id,
            )


def _straight_on(flow: Flow, node_id: str) -> list[str]:
    """The nodes a call passes through from `node_id` when no choice is involved."""
    passed: list[str] = []
    while node_id in flow.nodes and node_id not in passed:
        passed.append(node_id)
        node = flow.nodes[node_id]
        if isinstance(node, SayNode):
            node_id = node.next
        elif isinstance(node, GotoNode):
            node_id = node.target
        else:
            break
    return passed


def _check_menus_let_silent_callers_go(flow: Flow, report: _Report) -> None:
    """A menu's exit that leads straight back to it keeps a silent line open forever (each
    return resets the menu's counters)."""
    trapped = _trapped(flow)  # menus reported as having no way out at all
    for node_id, node in flow.nodes.items():
        if (
            isinstance(node, MenuNode)
            and node_id not in trapped
            and node_id in _straight_on(flow, node.exit)
        ):
            report.warning(
                "the exit leads back to this menu: a caller who stays silent or keeps "
                "pressing wrong keys is never let go; send it to a goodbye or an agent",
                node_id,
            )


def _check_on_error(flow: Flow, report: _Report) -> None:
    target = flow.nodes.get(flow.on_error) if flow.on_error else None
    if target is None or isinstance(target, AgentNode | HangupNode):
        return
    if isinstance(target, TransferNode) and target.to_number:
        return
    report.warning(
        f"on_error goes to {flow.on_error!r}, a {target.type} node: only an agent node or a "
        "transfer to a number can take over a failed call; callers just hear a goodbye"
    )


_MOBILE_SDK_IDENTITY = re.compile(r"^[A-Za-z0-9_]{1,121}$")


def _check_client_identities(flow: Flow, report: _Report) -> None:
    """Twilio's Voice SDKs for iOS and Android take identities of letters, digits and '_'
    only: an agent app there never rings for one with '.', '@' or '-' (a browser may)."""
    for node_id, node in flow.nodes.items():
        client = node.dial.client if isinstance(node, AgentNode) and node.dial else None
        if client and not _MOBILE_SDK_IDENTITY.match(client):
            report.warning(
                f"client identity {client!r} has characters Twilio's iOS and Android Voice "
                "SDKs do not take (only letters, digits and '_'): an agent on a mobile app "
                "would never ring",
                node_id,
            )


def _check_hours(flow: Flow, report: _Report) -> None:
    for node_id, node in flow.nodes.items():
        if isinstance(node, HoursNode) and not any(weekly_ranges(node).values()):
            report.warning(
                "never open: the weekly schedule has no opening hours, so every call goes "
                f"to {node.closed!r}",
                node_id,
            )


def _check_unreachable(flow: Flow, report: _Report) -> None:
    if flow.start not in flow.nodes:
        return  # everything would be unreachable: the start error says it all
    found = reachable(flow)
    for node_id in flow.nodes:
        if node_id not in found:
            report.warning(f"not reachable from start {flow.start!r}", node_id)


# -- prompts ---------------------------------------------------------------------------------


def _check_prompts(
    flow: Flow, prompts: PromptCatalogs, report: _Report, require_audio: bool
) -> None:
    """Each prompt must be speakable in every locale a caller of this flow can be in. The
    engine falls back to the default locale's text (in its voice), so a gap there is a
    warning, and a gap in the default locale too is an error (the engine cannot speak it)."""
    languages = {
        node_id: node for node_id, node in flow.nodes.items() if isinstance(node, LanguageNode)
    }
    _check_locales(flow, prompts, languages, report)
    speakers: dict[str, set[str]] = {}  # locale -> keys spoken from its catalog (and recordings)
    reached = _locales_reached(flow, prompts, languages)
    _check_texts(flow, prompts, reached, speakers, report)
    _check_language_prompts(prompts, languages, speakers, report)
    _check_placeholders(flow, prompts, reached, report)
    if require_audio:
        _check_recordings(prompts, speakers, report)


def _check_locales(
    flow: Flow, prompts: PromptCatalogs, languages: dict[str, LanguageNode], report: _Report
) -> None:
    available = ", ".join(prompts.locales)
    if flow.locale and flow.locale not in prompts.catalogs:
        report.error(f"locale {flow.locale} has no prompt catalog (available: {available})")
    for node_id, node in languages.items():
        for key, locale in node.options.items():
            if locale not in prompts.catalogs:
                report.error(
                    f"option {key} is {locale}, which has no prompt catalog "
                    f"(available: {available})",
                    node_id,
                )


def _locales_reached(
    flow: Flow, prompts: PromptCatalogs, languages: dict[str, LanguageNode]
) -> list[str]:
    """The catalogs a caller of this flow may hear, resolved as the engine resolves them."""
    if flow.locale is None:  # the engine picks any catalog by the caller's country
        return prompts.locales
    options = (locale for node in languages.values() for locale in node.options.values())
    return sorted({prompts.catalog(locale).locale for locale in [flow.locale, *options]})


def _check_texts(
    flow: Flow,
    prompts: PromptCatalogs,
    locales: list[str],
    speakers: dict[str, set[str]],
    report: _Report,
) -> None:
    catalogs, default = prompts.catalogs, prompts.default_locale
    defaults = catalogs[default].prompts
    users: dict[str, str] = {}  # prompt key -> the first node that speaks it
    for node_id, node in flow.nodes.items():
        if not isinstance(node, LanguageNode):  # said in each option's own locale
            for key in node.prompt_keys():
                users.setdefault(key, node_id)
    for key, node_id in users.items():
        missing = [locale for locale in locales if key not in catalogs[locale].prompts]
        if missing and key not in defaults:
            elsewhere = ", ".join(locale for locale in missing if locale != default)
            report.error(
                f"prompt {key!r} is missing in the default locale {default}"
                + (f" and in {elsewhere}" if elsewhere else "")
                + ", so it cannot be spoken"
                + did_you_mean(key, defaults),
                node_id,
            )
            continue
        for locale in missing:
            report.warning(
                f"prompt {key!r} is missing in {locale}: callers there hear the {default} text",
                node_id,
            )
        for locale in locales:
            speakers.setdefault(default if locale in missing else locale, set()).add(key)


def _values_given(node: Node, key: str) -> set[str]:
    """The {placeholders} the engine fills when `node` speaks `key`."""
    given = {"app_name"}
    if isinstance(node, AuthenticateNode) and key in (node.sent_sms_prompt, node.sent_call_prompt):
        given.add("ending")  # the phone's last digits
    if isinstance(node, LanguageNode) and key == node.prompt:
        given.add("digit")  # the option's key
    return given


def _check_placeholders(
    flow: Flow, prompts: PromptCatalogs, locales: list[str], report: _Report
) -> None:
    """A prompt's text may only name {placeholders} its node fills: any other one would fail
    the turn, and the caller hear an apology instead of the prompt."""
    catalogs, default = prompts.catalogs, prompts.default_locale
    for node_id, node in flow.nodes.items():
        spoken_in = (
            sorted({prompts.catalog(locale).locale for locale in node.options.values()})
            if isinstance(node, LanguageNode)
            else locales
        )
        for key in dict.fromkeys(node.prompt_keys()):
            unfilled: set[str] = set()
            for locale in spoken_in:
                text = catalogs[locale].prompts.get(key, catalogs[default].prompts.get(key))
                if text is not None:
                    unfilled |= _placeholders(text) - _values_given(node, key)
            if unfilled:
                names = ", ".join(f"{{{name}}}" for name in sorted(unfilled))
                report.error(
                    f"prompt {key!r} says {names}, which a {node.type} node does not fill: "
                    "the call could not go on past it",
                    node_id,
                )


def _placeholders(text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError:  # an unbalanced brace: the catalog's own check says so
        return set()


def _check_language_prompts(
    prompts: PromptCatalogs,
    languages: dict[str, LanguageNode],
    speakers: dict[str, set[str]],
    report: _Report,
) -> None:
    """A language node offers each option in that option's own language."""
    catalogs, default = prompts.catalogs, prompts.default_locale
    defaults = catalogs[default].prompts
    for node_id, node in languages.items():
        for key, locale in node.options.items():
            if locale not in catalogs:
                continue  # reported with the locales
            if node.prompt in catalogs[locale].prompts:
                speakers.setdefault(locale, set()).add(node.prompt)
            elif node.prompt in defaults:
                report.warning(
                    f"option {key} ({locale}): prompt {node.prompt!r} is missing in {locale}, "
                    f"so this option is offered in {default}",
                    node_id,
                )
                speakers.setdefault(default, set()).add(node.prompt)
            else:
                report.error(
                    f"option {key} ({locale}): prompt {node.prompt!r} is missing in {locale}"
                    + (f" and in the default locale {default}" if locale != default else "")
                    + ", so it cannot be spoken"
                    + did_you_mean(node.prompt, defaults),
                    node_id,
                )


def _check_recordings(
    prompts: PromptCatalogs, speakers: dict[str, set[str]], report: _Report
) -> None:
    """One warning per locale: a recording is optional, so a list per key would drown the rest."""
    for locale, keys in sorted(speakers.items()):
        unrecorded = sorted(keys - set(prompts.catalogs[locale].audio))
        if unrecorded:
            folder = prompts.directory / "audio" / locale
            report.warning(
                f"no recording in {folder}/ for {len(unrecorded)} prompt(s) "
                f"(text-to-speech instead): {', '.join(unrecorded)}"
            )


__all__ = ["TERMINAL_TYPES", "graph", "is_terminal", "lint", "reachable"]
