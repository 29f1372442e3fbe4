"""A flow drawn as inline SVG for the console: layered top to bottom, one shape and colour per
kind of node, arrows labelled with menu keys and branch names, every node a keyboard link.

Pure (no Flask, no Redis) and deterministic: the same flow always gives the same bytes, so a
page can be cached and a test can compare. The layout is a small Sugiyama: layers by longest
path from `start` (the back edges of loops left out), long edges split into invisible way
points so they pass between boxes instead of through them, barycenter sweeps against
crossings, then x positions pulled toward neighbours under the rows' spacing constraints.
Loops go up the right-hand side of the boxes, in lanes kept free for them; long ones go round
the outside in a channel per target, so "back to the main menu" from anywhere is one line.

No `style` attribute or element anywhere: the console's Content-Security-Policy forbids inline
styles, so colours are presentation attributes (right with no stylesheet) and CSS classes let
the page's stylesheet refine them. All text and attribute values are escaped (saxutils).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from xml.sax.saxutils import escape

from ivr.flows.lint import is_terminal, reachable
from ivr.flows.model import Flow, GotoNode, HoursNode, Node
from ivr.flows.render import MISSING, summary

SVG_NS = "http://www.w3.org/2000/svg"

NODE_WIDTH = 200  # the narrowest box; wider when the id or the branch labels need it
NODE_HEIGHT = 66  # three lines: id, type, summary
NOTE_HEIGHT = 14  # a fourth line when the flow's nodes carry descriptions
ENTRY_WIDTH, ENTRY_HEIGHT = 74, 26  # the "start" and "on error" markers
GAP_X = 44  # between two boxes of a row
WAYPOINT_GAP = 14  # between a way point of a long edge and its neighbours
GAP_Y = 74  # between rows: labels under the boxes, then the curves
ENTRY_GAP = 30  # under the row of markers
LABEL_STEM = 24  # the straight start of a labelled arrow, where its label sits
ARRIVAL_STEM = 8  # the straight end of an arrow, so its head points into the box
LANE_GAP = 12  # between two loop lanes beside a box
SHORT_LOOP = 2  # loops over more rows than this go round the outside, in a channel
CHANNEL_GAP = 10  # between two channels of loops on the outside
RUN_GAP = 6  # between two sideways runs of loops in one gap between rows
LOOP_REACH = 34  # how far a self-loop bulges left of its box
MARGIN = 20
LEGEND_GAP = 28

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
INK, SOFT_INK, EDGE_INK, LOOP_INK, ERROR = "#0f172a", "#475569", "#475569", "#6d28d9", "#c81e1e"

# Fill and stroke per node type. Families share a shape (see `_shape_of`) and a hue range:
# the nodes that wait for keys are blues and purples, decisions amber, speech slate, the ends
# of the flow's part of the call green, teal and brown.
PALETTE: dict[str, tuple[str, str]] = {
    "menu": ("#dbeafe", "#1d4ed8"),
    "language": ("#cffafe", "#0e7490"),
    "collect": ("#e0e7ff", "#4338ca"),
    "identify": ("#f3e8ff", "#7e22ce"),
    "authenticate": ("#fae8ff", "#a21caf"),
    "hours": ("#fef3c7", "#b45309"),
    "say": ("#f1f5f9", "#475569"),
    "play": ("#e2e8f0", "#334155"),
    "goto": ("#ffffff", "#64748b"),
    "agent": ("#dcfce7", "#15803d"),
    "transfer": ("#ccfbf1", "#0f766e"),
    "hangup": ("#f5e6dc", "#9a3412"),
    "missing": ("#fff1f2", ERROR),
}
# The legend's order: asking, deciding, speaking, ending.
TYPE_ORDER = tuple(PALETTE)[:-1]

# What each shape means, for the legend and the `node-<family>` class.
FAMILIES = {
    "octagon": "waits",  # the caller is asked for keys
    "hexagon": "decides",  # the flow decides on its own
    "rect": "speaks",
    "tag": "jumps",
    "pill": "ends",  # an agent, a transfer or a hangup: this flow's part is over
    "missing": "missing",
}

# Advance widths of DejaVu Sans (the widest of the usual system fonts, so estimates err on
# the safe side) in ems, by character class; bold is about 10% wider.
_WIDTHS = (
    (0.29, "ijlIJ'|!"),
    (0.34, "f.,:;/ "),
    (0.41, "rt()-[]{}"),
    (0.52, 'sz_*"?'),
    (0.59, "ckvxyFLPTY"),
    (0.72, "ABCKRVXZU"),
    (0.79, "DGHNOQ&"),
    (0.86, "mMw+#<>=~%"),
    (1.0, "W@…"),
)
_WIDTH_OF = {char: width for width, chars in _WIDTHS for char in chars}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _advance(char: str) -> float:
    return _WIDTH_OF.get(char, 0.64 if ord(char) < 128 else 0.8)


def _text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Roughly how wide `text` is drawn: SVG text has no layout, so boxes are sized by this."""
    return sum(map(_advance, text)) * size * (1.1 if bold else 1.0)


def _fit_text(text: str, width: float, size: float, *, bold: bool = False) -> str:
    """`text` on one line, cut with an ellipsis so it fits in `width`."""
    text = " ".join(_NOT_XML.sub("", text).split())
    scale = size * (1.1 if bold else 1.0)
    if sum(map(_advance, text)) * scale <= width:
        return text
    room = width / scale - _advance("…")
    used = 0.0
    for end, char in enumerate(text):
        used += _advance(char)
        if used > room:
            return text[:end].rstrip() + "…"
    return text


def _branch_label(branch: str) -> str:
    """What an arrow says: the key alone for a menu option ("key 1" -> "1"), else the branch."""
    return branch[4:] if branch.startswith("key ") else branch


def _summary(node: Node | None) -> str:
    """The summary line; a goto says where it jumps, which its arrow alone leaves unsaid."""
    if node is None:
        return ""
    if isinstance(node, GotoNode):
        return summary(node) or f"to {node.target}"
    return summary(node)


def _shape_of(node: Node | None) -> str:
    if node is None:
        return "missing"
    if isinstance(node, HoursNode):
        return "hexagon"
    if node.waits_for_keys:
        return "octagon"
    if is_terminal(node):
        return "pill"
    if isinstance(node, GotoNode):
        return "tag"
    return "rect"


# -- the layout ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Item:
    """Something with a place in a row: a node, a missing target's placeholder, a marker, or
    a way point of a long edge (invisible, narrow)."""

    index: int
    kind: str  # "node" | "missing" | "entry" | "waypoint"
    name: str
    row: int
    width: float
    rank: tuple[int, int, int]  # the first order within the row, before crossings are reduced
    node: Node | None = None
    shape: str = "rect"
    left_room: float = 0.0  # beyond the box: a self-loop on the left
    right_room: float = 0.0  # beyond the box: loop lanes and their labels on the right
    lane_base: float = 0.0  # the first lane's distance from the box's right side
    departures: int = 0  # loops that leave it, one lane each
    x: float = 0.0  # the centre
    top: float = 0.0
    height: float = 0.0
    ups: list[tuple[_Item, float, float, float]] = field(default_factory=list)
    downs: list[tuple[_Item, float, float, float]] = field(default_factory=list)

    @property
    def left(self) -> float:
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        return self.x + self.width / 2

    @property
    def bottom(self) -> float:
        return self.top + self.height


@dataclass(eq=False)
class _Edge:
    """One arrow: the branches of a node that lead to the same place share it."""

    order: int
    source: _Item
    target: _Item
    label: str
    direction: str  # "down" | "up" | "self"
    kind: str  # "branch" | "start" | "on-error"
    waypoints: list[_Item] = field(default_factory=list)
    lane: int = 0  # for "up": which lane beside the source
    out_x: float = 0.0  # where it leaves the source (down) / enters the target (down)
    in_x: float = 0.0
    turn: float = 0.5  # where between the rows the arrow's first bend is, 0 top to 1 bottom
    outside: bool = False  # a long loop, routed right of the rows it spans
    joins_y: float = 0.0  # outside: the height of its run from the source to the channel


def _layers(flow: Flow, found: set[str]) -> dict[str, int]:
    """Each node's layer: the longest path from start (or on_error) over forward edges. One
    iterative depth-first search finds the back edges of loops, which do not count, and gives
    a topological order of the rest. Unreachable nodes are layered among themselves, below."""
    nodes = flow.nodes
    targets = {n: [t for t in node.exits().values() if t in nodes] for n, node in nodes.items()}
    roots = [n for n in (flow.start, flow.on_error) if n in nodes] + list(nodes)
    state: dict[str, int] = {}  # 1: on the stack, 2: finished
    back: set[tuple[str, str]] = set()
    finished: list[str] = []
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(targets[root]))]
        while stack:
            current, children = stack[-1]
            for child in children:
                seen = state.get(child)
                if seen == 1:
                    back.add((current, child))
                elif seen is None:
                    state[child] = 1
                    stack.append((child, iter(targets[child])))
                    break
            else:
                state[current] = 2
                finished.append(current)
                stack.pop()
    layer = dict.fromkeys(nodes, 0)
    for current in reversed(finished):
        for child in targets[current]:
            if (current, child) not in back and (current in found) == (child in found):
                layer[child] = max(layer[child], layer[current] + 1)
    # Below every reachable node and every placeholder hanging from one.
    floor = 0
    for node_id, node in nodes.items():
        if node_id in found:
            dangling = any(t not in nodes for t in node.exits().values())
            floor = max(floor, layer[node_id] + 1 + dangling)
    if not found:
        floor = 1  # the placeholder of a missing start takes the first layer
    for node_id in nodes:
        if node_id not in found:
            layer[node_id] += floor
    return layer


def _discovery(flow: Flow) -> dict[str, int]:
    """Breadth-first order from start, on_error, then the unreachable in file order: the
    first order within a row, so the same file always starts the sweeps the same way."""
    order: dict[str, int] = {}
    for root in [flow.start, flow.on_error, *flow.nodes]:
        if root is None or root in order:
            continue
        queue = deque([root])
        while queue:
            current = queue.popleft()
            if current in order:
                continue
            order[current] = len(order)
            node = flow.nodes.get(current)
            if node is not None:
                queue.extend(node.exits().values())
    return order


class _Layout:
    """Rows of items, the edges between them, and every coordinate."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.found = reachable(flow)
        self.node_height = NODE_HEIGHT + (
            NOTE_HEIGHT if any(n.description for n in flow.nodes.values()) else 0
        )
        self.items: list[_Item] = []
        self.edges: list[_Edge] = []
        self.by_name: dict[tuple[str, str], _Item] = {}
        self._waypoints: dict[tuple[int, int, str], _Item] = {}
        self._build()
        self.rows: list[list[_Item]] = [[] for _ in range(1 + max(i.row for i in self.items))]
        for item in sorted(self.items, key=lambda i: i.rank):
            self.rows[item.row].append(item)
        self._order()
        self._place_x()
        self._channels()
        self._ports()
        self._place_y()

    # -- items and edges -----------------------------------------------------------------

    def _add(
        self, kind: str, name: str, row: int, width: float, rank: tuple[int, int, int]
    ) -> _Item:
        item = _Item(len(self.items), kind, name, row, width, rank)
        self.items.append(item)
        if kind != "waypoint":
            self.by_name[(kind, name)] = item
        return item

    def _build(self) -> None:
        flow, nodes = self.flow, self.flow.nodes
        layer = _layers(flow, self.found)
        first = _discovery(flow)
        # Missing targets: below their lowest source; a missing start or on_error on top.
        missing: dict[str, int] = {}
        for root in (flow.start, flow.on_error):
            if root is not None and root not in nodes:
                missing.setdefault(root, 0)
        for node_id, node in nodes.items():
            for target in node.exits().values():
                if target not in nodes:
                    missing[target] = max(missing.get(target, 0), layer[node_id] + 1)
        # One arrow per (node, target): "1, 2" when two keys lead to the same place.
        arrows: list[tuple[str, str, str]] = []
        for node_id, node in nodes.items():
            branches = list(node.exits().items())
            grouped: dict[str, list[str]] = {}
            for branch, target in branches:
                grouped.setdefault(target, []).append(_branch_label(branch))
            for target, labels in grouped.items():
                if len(branches) == 1 and labels[0] in ("next", "goto"):
                    labels = []  # a node's only way on needs no name
                arrows.append((node_id, target, ", ".join(labels)))
        row_of = {**{("node", n): layer[n] + 1 for n in nodes}}
        row_of.update({("missing", m): row + 1 for m, row in missing.items()})
        down_labels: dict[str, list[float]] = {}
        for source, target, label in arrows:
            target_row = row_of[("node" if target in nodes else "missing", target)]
            if target_row > row_of[("node", source)]:
                down_labels.setdefault(source, []).append(_label_width(label))
        for node_id, node in nodes.items():
            labels = down_labels.get(node_id, [])
            width = max(
                NODE_WIDTH,
                _text_width(node_id, 13, bold=True) + 32,
                sum(max(w, 16) for w in labels) + 8 * len(labels) + 40,
            )
            item = self._add(
                "node", node_id, row_of[("node", node_id)], width, (first[node_id], 0, 0)
            )
            item.node, item.shape = node, _shape_of(node)
        for target, row in missing.items():
            width = max(NODE_WIDTH, _text_width(target, 13, bold=True) + 32)
            item = self._add("missing", target, row + 1, width, (first.get(target, 0), 0, 0))
            item.shape = "missing"

        def resolve(node_id: str) -> _Item:
            return self.by_name.get(("node", node_id)) or self.by_name[("missing", node_id)]

        for label, target, kind in (
            ("start", flow.start, "start"),
            ("on error", flow.on_error, "on-error"),
        ):
            if target is None:
                continue
            end = resolve(target)
            entry = self._add("entry", label, end.row - 1, ENTRY_WIDTH, (-2, len(self.items), 0))
            self._connect(entry, end, "", kind)
        for source, target, label in arrows:
            self._connect(resolve(source), resolve(target), label, "branch")
        lowest = min(item.row for item in self.items)
        for item in self.items:
            item.row -= lowest
        self._lanes()

    def _waypoint(
        self, target: _Item, row: int, direction: str, rank: tuple[int, int, int]
    ) -> _Item:
        """The way point of the edges to `target` in `row`: edges to one place share them, so
        several ways back to a menu merge into one trunk."""
        key = (target.index, row, direction)
        if key not in self._waypoints:
            self._waypoints[key] = self._add("waypoint", "", row, 2, rank)
        return self._waypoints[key]

    def _connect(self, source: _Item, target: _Item, label: str, kind: str) -> None:
        edge = _Edge(len(self.edges), source, target, label, "down", kind)
        self.edges.append(edge)
        if target is source:
            edge.direction = "self"
            source.left_room = max(source.left_room, LOOP_REACH + 8 + _label_width(label))
            return
        rank = (source.rank[0], 1, edge.order)
        if target.row > source.row:
            rows = range(source.row + 1, target.row)
        else:
            edge.direction = "up"
            rows = range(source.row - 1, target.row, -1)
            if len(rows) > SHORT_LOOP:
                # A long way back runs outside, right of the rows it passes: way points in
                # every row would widen them all and cost the layout its speed.
                edge.outside = True
                return
        edge.waypoints = [self._waypoint(target, row, edge.direction, rank) for row in rows]

    def _lanes(self) -> None:
        """Room on the right of each box for the loops that leave it (one lane each, labels
        beside the box) and the trunk of the loops that come back to it (the first lane)."""
        departures: dict[int, list[_Edge]] = {}
        arrivals: set[int] = set()
        for edge in self.edges:
            if edge.direction == "up":
                departures.setdefault(edge.source.index, []).append(edge)
                arrivals.add(edge.target.index)
        for item in self.items:
            leaving = departures.get(item.index, [])
            if not leaving and item.index not in arrivals:
                continue
            widest = max((_label_width(e.label) for e in leaving if e.label), default=0.0)
            item.lane_base = 14 + (widest + 4 if widest else 0)
            for lane, edge in enumerate(leaving):
                edge.lane = lane
            item.departures = len(leaving)
            lanes = max(len(leaving), 1)
            item.right_room = item.lane_base + (lanes - 1) * LANE_GAP + 6
        links: dict[tuple[int, int, float, float], float] = {}
        for edge in self.edges:
            self._link(edge, links)
        for (upper, lower, o_upper, o_lower), weight in links.items():
            self.items[upper].downs.append((self.items[lower], o_upper, o_lower, weight))
            self.items[lower].ups.append((self.items[upper], o_lower, o_upper, weight))

    def _lane_offset(self, item: _Item, lane: int) -> float:
        return item.width / 2 + item.lane_base + lane * LANE_GAP

    def _link(self, edge: _Edge, links: dict[tuple[int, int, float, float], float]) -> None:
        """Neighbours for the sweeps and the x placement, between items of adjacent rows,
        with the offsets of the ports they meet at; a long edge's way points weigh more, so
        long edges come out straight. Edges sharing way points share their links."""
        if edge.direction == "self" or edge.outside:
            return
        chain = [edge.source, *edge.waypoints, edge.target]
        offsets = [0.0] * len(chain)
        if edge.direction == "up":
            offsets[0] = self._lane_offset(edge.source, edge.lane)
            offsets[-1] = self._lane_offset(edge.target, 0)
        for p in range(len(chain) - 1):
            a, b, oa, ob = chain[p], chain[p + 1], offsets[p], offsets[p + 1]
            weight = (1.0, 2.0, 8.0)[(a.kind == "waypoint") + (b.kind == "waypoint")]
            if edge.direction == "up":
                weight /= 4  # loops follow the layout; they should not bend it
            key = (a.index, b.index, oa, ob) if a.row < b.row else (b.index, a.index, ob, oa)
            links[key] = max(links.get(key, 0.0), weight)

    # -- order within rows ----------------------------------------------------------------

    def _order(self) -> None:
        """Barycenter sweeps down and up; the order with the fewest crossings wins."""
        self._position = [0] * len(self.items)
        self._renumber(self.rows)
        best = [list(row) for row in self.rows]
        fewest = self._crossings()
        for _ in range(4):
            if not fewest:
                break
            for row in self.rows[1:]:
                self._sort_row(row, upward=True)
            for row in reversed(self.rows[:-1]):
                self._sort_row(row, upward=False)
            crossings = self._crossings()
            if crossings >= fewest:
                break  # a sweep that gains nothing: later ones rarely do
            fewest, best = crossings, [list(row) for row in self.rows]
        self.rows = best
        self._renumber(self.rows)
        if fewest:
            self._transpose()

    def _renumber(self, rows: Iterable[list[_Item]]) -> None:
        for row in rows:
            for position, item in enumerate(row):
                self._position[item.index] = position

    def _sort_row(self, row: list[_Item], *, upward: bool) -> None:
        """Each item to the mean position of its neighbours in the row above (or below); an
        item with none keeps its place. Ties keep the current order, so it is stable."""
        position = self._position
        keys = {}
        for p, item in enumerate(row):
            links = item.ups if upward else item.downs
            mean = sum(position[o.index] for o, *_ in links) / len(links) if links else p
            keys[item.index] = (mean, p)
        row.sort(key=lambda item: keys[item.index])
        self._renumber([row])

    def _transpose(self) -> None:
        """Neighbours in a row swap places while that removes crossings (a local clean-up
        the sweeps miss, as in Graphviz's dot)."""
        position = self._position
        for _ in range(4):
            improved = False
            for row in self.rows:
                # The rows above and below stay put meanwhile: their positions, sorted.
                ends = {
                    item.index: (
                        sorted(position[o.index] for o, *_ in item.ups),
                        sorted(position[o.index] for o, *_ in item.downs),
                    )
                    for item in row
                }
                for p in range(len(row) - 1):
                    left, right = ends[row[p].index], ends[row[p + 1].index]
                    if _pair_crossings(left, right) > _pair_crossings(right, left):
                        row[p], row[p + 1] = row[p + 1], row[p]
                        position[row[p].index], position[row[p + 1].index] = p, p + 1
                        improved = True
            if not improved:
                return

    def _crossings(self) -> int:
        total = 0
        position = self._position
        for upper, lower in pairwise(self.rows):
            pairs = sorted(
                (p, position[o.index]) for p, item in enumerate(upper) for o, *_ in item.downs
            )
            total += _inversions([b for _, b in pairs], len(lower))
        return total

    # -- coordinates ----------------------------------------------------------------------

    def _gap(self, a: _Item, b: _Item) -> float:
        space = WAYPOINT_GAP if "waypoint" in (a.kind, b.kind) else GAP_X
        return a.width / 2 + a.right_room + space + b.left_room + b.width / 2

    def _place_x(self) -> None:
        """Each row packed, then pulled toward its neighbours' ports, down and up in turn: the
        least-squares placement that keeps the row's order and spacing (pool adjacent
        violators), repeated until the picture settles."""
        for row in self.rows:
            x = 0.0
            for p, item in enumerate(row):
                if p:
                    x += self._gap(row[p - 1], item)
                item.x = x
        x = [item.x for item in self.items]
        moved = math.inf
        # Per item and direction: (neighbour, how far right of it this item wants to be,
        # weight), and the weights' sum.
        pulls: dict[str, list[tuple[list[tuple[int, float, float]], float]]] = {}
        for direction in ("down", "up", "both"):
            pulls[direction] = []
            for item in self.items:
                links = {"down": item.ups, "up": item.downs, "both": item.ups + item.downs}
                chosen = [(o.index, oo - mine, w) for o, mine, oo, w in links[direction]]
                pulls[direction].append((chosen, sum(w for *_, w in chosen)))
        offsets = []
        for row in self.rows:
            offsets.append([0.0])
            for a, b in pairwise(row):
                offsets[-1].append(offsets[-1][-1] + self._gap(a, b))
        settling = ["down", "up"] * 2 + ["both"] * 5
        for count, direction in enumerate([*settling, "up", "down"]):
            if count < len(settling) and count > 1 and moved < 0.5:
                continue  # settled: straight on to the last two passes
            moved = 0.0
            pull = pulls[direction]
            rows = range(len(self.rows))
            for r in reversed(rows) if direction == "up" else rows:
                row = self.rows[r]
                desired, weights = [], []
                for item in row:
                    links, total = pull[item.index]
                    if links:
                        desired.append(sum((x[o] + d) * w for o, d, w in links) / total)
                        weights.append(total)
                    else:
                        desired.append(x[item.index])
                        weights.append(0.05)
                placed = _fit(desired, weights, offsets[r]) if len(row) > 1 else desired
                for item, value in zip(row, placed, strict=True):
                    moved = max(moved, abs(value - x[item.index]))
                    x[item.index] = value
        for item in self.items:
            item.x = x[item.index]
        lowest = min(item.x - item.width / 2 - item.left_room for item in self.items)
        for item in self.items:
            item.x = round(item.x - lowest + MARGIN, 1)
        self.width = max(item.x + item.width / 2 + item.right_room for item in self.items) + MARGIN

    def _channels(self) -> None:
        """A channel right of the rows for each target of long loops, which all its loops
        share; shorter spans inside longer ones, so they nest. Every loop has a sideways run
        in the gap over its source's row, and a channel one in the gap under its target's."""
        trunks: dict[int, list[_Edge]] = {}
        for edge in self.edges:
            if edge.outside:
                trunks.setdefault(edge.target.index, []).append(edge)
        self.channels: dict[int, float] = {}
        self.trunk_main: dict[int, _Edge] = {}
        self.trunks: dict[int, list[_Edge]] = {}
        self.runs: dict[int, list[object]] = {}  # gap under row r -> what runs there
        placed: list[tuple[int, int, float]] = []
        ends = [
            max((i.x + i.width / 2 + i.right_room for i in row), default=0) for row in self.rows
        ]
        spans = sorted(
            trunks.items(),
            key=lambda t: (max(e.source.row for e in t[1]) - self.items[t[0]].row, t[0]),
        )
        for target_index, edges in spans:
            top, bottom = self.items[target_index].row, max(e.source.row for e in edges)
            x = max(ends[top : bottom + 1]) + 16
            for other_top, other_bottom, other_x in placed:
                if other_top <= bottom and top <= other_bottom:
                    x = max(x, other_x + CHANNEL_GAP)
            placed.append((top, bottom, x))
            self.channels[target_index] = x
            self.runs.setdefault(top, []).append(target_index)
            # The lowest reachable loop draws the shared part; the others join it.
            edges.sort(key=lambda e: (e.source.name not in self.found, -e.source.row, e.order))
            self.trunk_main[target_index] = edges[0]
            self.trunks[target_index] = edges
            for edge in edges:
                self.runs.setdefault(edge.source.row - 1, []).append(edge)
        if placed:
            self.width = max(self.width, max(x for *_, x in placed) + 8 + MARGIN)

    def _place_y(self) -> None:
        """Rows top to bottom; a gap grows with how far its arrows go sideways, so a wide fan
        under a menu has the height to spread out."""
        y = MARGIN
        self.row_tops: list[float] = []
        gap = 0.0
        self.trunk_y: dict[int, float] = {}  # target -> the height of its channel's run
        for r, row in enumerate(self.rows):
            markers_only = all(item.kind == "entry" for item in row)
            height = ENTRY_HEIGHT if markers_only else self.node_height
            self.row_tops.append(y)
            for item in row:
                item.height = ENTRY_HEIGHT if item.kind == "entry" else height
                # A marker sits at the foot of its row, near what it points at.
                item.top = y + height - item.height
            reach = max(
                (
                    abs(o.x + theirs - item.x - mine)
                    for item in row
                    for o, mine, theirs, _ in item.downs
                ),
                default=0.0,
            )
            runs = self.runs.get(r, [])
            # Room under the row for labels and loops' runs, when it has any.
            roomy = runs or any(item.index in self.labelled for item in row)
            gap = GAP_Y if roomy else GAP_Y - LABEL_STEM
            gap = ENTRY_GAP if markers_only else gap + min(max(reach / 10 - 20, 0), 70)
            gap += max(len(runs) - 3, 0) * RUN_GAP
            # Sideways runs of long loops: in the middle of the gap, clear of the labels
            # under the row and of the arrowheads over the next.
            for k, run in enumerate(runs):
                run_y = y + height + LABEL_STEM + 8 + k * RUN_GAP
                if isinstance(run, _Edge):
                    run.joins_y = run_y
                else:
                    self.trunk_y[run] = run_y
            y += height + gap
        self.height = y - gap + MARGIN

    def _ports(self) -> None:
        """Where each arrow leaves and enters: spread along the bottom and the top of a box in
        the order of where they go, so they leave without crossing; labels get room."""
        leaving: dict[int, list[_Edge]] = {}
        self.labelled = {e.source.index for e in self.edges if e.direction == "down" and e.label}
        entering: dict[int, list[tuple[float, int, _Edge]]] = {}
        for edge in self.edges:
            if edge.direction != "down":
                continue
            chain = [edge.source, *edge.waypoints, edge.target]
            leaving.setdefault(edge.source.index, []).append(edge)
            before = chain[-2]
            entering.setdefault(edge.target.index, []).append((before.x, before.index, edge))
        for index, edges in leaving.items():
            item = self.items[index]
            edges.sort(key=lambda e: ([*e.waypoints, e.target][0].x, e.order))
            widths = [max(_label_width(e.label), 16) for e in edges]
            steps = [(a + b) / 2 + 8 for a, b in pairwise(widths)]
            x = item.x - sum(steps) / 2
            for p, edge in enumerate(edges):
                edge.out_x = x
                if p < len(steps):
                    x += steps[p]
            # Arrows fanning out turn one below the other, the farthest first, so their
            # sideways runs lie apart instead of on top of each other.
            goes = [[*e.waypoints, e.target][0].x - e.out_x for e in edges]
            left = [e for e, dx in zip(edges, goes, strict=True) if dx < -1]
            right = [e for e, dx in zip(edges, goes, strict=True) if dx > 1][::-1]
            for side in (left, right):
                for level, edge in enumerate(side):
                    edge.turn = 0.3 + 0.4 * level / (len(side) - 1) if len(side) > 1 else 0.5
        for index, arrivals in entering.items():
            item = self.items[index]
            arrivals.sort(key=lambda a: (a[0], a[1]))
            groups: dict[int, list[_Edge]] = {}
            for _, before, edge in arrivals:
                groups.setdefault(before, []).append(edge)
            usable = max(item.width - self.node_height - 8, 0)
            step = min(18.0, usable / (len(groups) - 1)) if len(groups) > 1 else 0.0
            x = item.x - step * (len(groups) - 1) / 2
            for edges in groups.values():
                for edge in edges:
                    edge.in_x = x
                x += step


def _pair_crossings(left: tuple[list[int], list[int]], right: tuple[list[int], list[int]]) -> int:
    """Crossings between the edges of two neighbours in a row, `left` left of `right`, from
    the sorted positions of their neighbours above and below."""
    count = 0
    for mine, theirs in zip(left, right, strict=True):
        if mine and theirs:
            count += sum(bisect_left(theirs, a) for a in mine)
    return count


def _label_width(label: str) -> float:
    return _text_width(label, 11, bold=True) + 12 if label else 0.0


def _inversions(values: list[int], size: int) -> int:
    """Pairs out of order (edge crossings between two rows), with a Fenwick tree."""
    tree = [0] * (size + 1)
    count = 0
    for seen, value in enumerate(values):
        i = value + 1
        below = 0
        while i > 0:
            below += tree[i]
            i -= i & -i
        count += seen - below
        i = value + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
    return count


def _fit(desired: list[float], weights: list[float], offsets: list[float]) -> list[float]:
    """Positions as close as can be (weighted least squares) to `desired`, in order, the
    i-th at least `offsets[i] - offsets[i - 1]` right of the one before: isotonic regression
    of `desired - offsets` by pooling adjacent violators."""
    sums: list[float] = []
    masses: list[float] = []
    counts: list[int] = []
    for want, weight, offset in zip(desired, weights, offsets, strict=True):
        total, mass, count = (want - offset) * weight, weight, 1
        while sums and sums[-1] * mass > total * masses[-1]:  # the block before is too far right
            total += sums.pop()
            mass += masses.pop()
            count += counts.pop()
        sums.append(total)
        masses.append(mass)
        counts.append(count)
    fitted: list[float] = []
    for total, mass, count in zip(sums, masses, counts, strict=True):
        fitted.extend([total / mass] * count)
    return [value + offset for value, offset in zip(fitted, offsets, strict=True)]


# -- shapes --------------------------------------------------------------------------------

_CHAMFER, _POINT, _TAG = 12.0, 20.0, 12.0


def _inset_vertical(shape: str, width: float, height: float, dx: float, *, bottom: bool) -> float:
    """How far inside its box's top (or bottom) a shape's outline is, `dx` from the centre."""
    dx = abs(dx)
    if shape == "pill":
        radius = height / 2
        over = dx - (width / 2 - radius)
        return 0.0 if over <= 0 else radius - math.sqrt(max(radius * radius - over * over, 0))
    if shape == "octagon":
        return max(0.0, dx - (width / 2 - _CHAMFER))
    if shape == "hexagon":
        over = dx - (width / 2 - _POINT)
        return 0.0 if over <= 0 else height / 2 * over / _POINT
    if shape == "tag" and bottom:
        return _TAG * dx / (width / 2)
    return 0.0


def _inset_side(shape: str, height: float, dy: float) -> float:
    """How far inside its box's side a shape's outline is, `dy` from the middle."""
    dy = abs(dy)
    if shape == "pill":
        radius = height / 2
        return radius - math.sqrt(max(radius * radius - dy * dy, 0))
    if shape == "octagon":
        return max(0.0, dy - (height / 2 - _CHAMFER))
    if shape == "hexagon":
        return _POINT * (1 - dy / (height / 2))
    return 0.0


def _fmt(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _points(pairs: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in pairs)


def _outline(
    shape: str, cx: float, top: float, width: float, height: float
) -> tuple[str, dict[str, str]]:
    """A shape's element: its tag and geometry, for the caller to colour."""
    left, right, bottom = cx - width / 2, cx + width / 2, top + height
    if shape == "octagon":
        c = min(_CHAMFER, height / 3)
        corners = [
            (left + c, top), (right - c, top), (right, top + c), (right, bottom - c),
            (right - c, bottom), (left + c, bottom), (left, bottom - c), (left, top + c),
        ]  # fmt: skip
        return "polygon", {"points": _points(corners)}
    if shape == "hexagon":
        p = min(_POINT, width / 4)
        mid = top + height / 2
        corners = [
            (left + p, top), (right - p, top), (right, mid),
            (right - p, bottom), (left + p, bottom), (left, mid),
        ]  # fmt: skip
        return "polygon", {"points": _points(corners)}
    if shape == "tag":
        t = min(_TAG, height / 3)
        corners = [(left, top), (right, top), (right, bottom - t), (cx, bottom), (left, bottom - t)]
        return "polygon", {"points": _points(corners)}
    radius = height / 2 if shape == "pill" else 4
    return "rect", {
        "x": _fmt(left),
        "y": _fmt(top),
        "width": _fmt(width),
        "height": _fmt(height),
        "rx": _fmt(radius),
    }


# -- markup --------------------------------------------------------------------------------

_ATTRIBUTE_ESCAPES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_SPECIAL = re.compile('[&<>"\n\r\t]')


def _clean(text: str) -> str:
    """One line of text XML can carry: no control characters, whitespace collapsed."""
    return " ".join(_NOT_XML.sub("", text).split())


def _attributes(attributes: Mapping[str, str]) -> str:
    """` name="value"` for each, escaped for double quotes (most values are numbers, so a
    quick look decides whether saxutils has anything to do)."""
    return "".join(
        f' {name}="{escape(value, _ATTRIBUTE_ESCAPES) if _SPECIAL.search(value) else value}"'
        for name, value in attributes.items()
    )


class _Markup:
    """SVG written as it is drawn. Every attribute value and every text goes through
    `_attributes` or `_clean` + saxutils' `escape`: nothing the team wrote reaches the markup
    unescaped. (Strings, not ElementTree: its pure-Python writer took a third of the time.)"""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def open(self, tag: str, attributes: Mapping[str, str]) -> None:
        self.parts.append(f"<{tag}{_attributes(attributes)}>")

    def close(self, tag: str) -> None:
        self.parts.append(f"</{tag}>")

    def empty(self, tag: str, attributes: Mapping[str, str]) -> None:
        self.parts.append(f"<{tag}{_attributes(attributes)}/>")

    def element(self, tag: str, text: str, attributes: Mapping[str, str] | None = None) -> None:
        self.parts.append(f"<{tag}{_attributes(attributes or {})}>{escape(_clean(text))}</{tag}>")

    def text(
        self,
        text: str,
        x: float,
        y: float,
        *,
        size: float | None = None,
        fill: str | None = None,
        css: str = "",
        anchor: str | None = None,
        bold: bool = False,
        italic: bool = False,
    ) -> None:
        """A `<text>`; what it leaves out it inherits (the root: 13px, ink, centred), which
        keeps big diagrams small."""
        attributes = {"x": _fmt(x), "y": _fmt(y)}
        if anchor:
            attributes["text-anchor"] = anchor
        if fill:
            attributes["fill"] = fill
        if size:
            attributes["font-size"] = _fmt(size)
        if bold:
            attributes["font-weight"] = "700"
        if italic:
            attributes["font-style"] = "italic"
        if css:
            attributes["class"] = css
        self.element("text", text, attributes)

    def shape(
        self, shape: str, cx: float, top: float, width: float, height: float, **paint: str
    ) -> None:
        """An outline (see `_outline`) with its colours; `paint` names use _ for -."""
        tag, attributes = _outline(shape, cx, top, width, height)
        attributes.update(
            {name.rstrip("_").replace("_", "-"): value for name, value in paint.items()}
        )
        self.empty(tag, attributes)

    def markup(self) -> str:
        return "".join(self.parts)


class _Drawing:
    """Turns a layout into SVG markup."""

    def __init__(
        self,
        layout: _Layout,
        node_href: Callable[[str], str] | None,
        problems: Mapping[str, Sequence[str]],
        selected: str | None,
    ) -> None:
        self.layout = layout
        self.flow = layout.flow
        self.node_href = node_href
        self.problems = problems
        self.selected = selected
        self.prefix = f"flow-{self.flow.name}"
        self.drawn: set[int] = set()  # way points some arrow already goes on from
        # Loops joining a channel below its main loop draw the channel up to where it is.
        self.channel_to: dict[int, float] = {}
        for main, *others in layout.trunks.values():
            covered = main.joins_y
            for edge in sorted(others, key=lambda e: (e.joins_y, e.order)):
                if edge.joins_y > covered:
                    self.channel_to[edge.order] = covered
                    covered = edge.joins_y

    def svg(self) -> str:
        flow, layout = self.flow, self.layout
        legend = _Markup()
        legend_height, legend_width = self._legend(legend, layout.height, max(layout.width, 520))
        width = max(layout.width, legend_width)
        height = layout.height + legend_height
        out = _Markup()
        out.open(
            "svg",
            {
                "xmlns": SVG_NS,
                "class": "flow-diagram",
                "role": "group",
                "aria-label": f"Flow {flow.name}",
                "viewBox": f"0 0 {_fmt(width)} {_fmt(height)}",
                "width": _fmt(width),
                "height": _fmt(height),
                "font-family": FONT,
                "font-size": "13",
                "text-anchor": "middle",
                "fill": INK,
            },
        )
        out.element("title", f"Flow {flow.name}")
        out.element("desc", self._description())
        self._defs(out)
        chosen = layout.by_name.get(("node", self.selected or ""))
        if chosen is not None:
            # Under the arrows, so the ones that end at the selected node still show.
            out.shape(
                chosen.shape,
                chosen.x,
                chosen.top - 5,
                chosen.width + 10,
                chosen.height + 10,
                fill="#bfdbfe",
                stroke="#2563eb",
                stroke_width="2.5",
                class_="selection-ring",
                aria_hidden="true",
            )
        # What most arrows share is said once, on their group, and inherited.
        out.open(
            "g",
            {
                "class": "edges",
                "aria-hidden": "true",
                "fill": "none",
                "stroke": EDGE_INK,
                "stroke-width": "1.6",
                "marker-end": f"url(#{self.prefix}-arrow)",
            },
        )
        labels = _Markup()
        for edge in layout.edges:
            self._edge(out, labels, edge)
        out.close("g")
        out.open(
            "g",
            {
                "class": "edge-labels",
                "aria-hidden": "true",
                "font-size": "11",
                "font-weight": "700",
            },
        )
        out.parts += labels.parts
        out.close("g")
        out.open("g", {"class": "nodes"})
        for row in layout.rows:
            for item in row:
                if item.kind == "entry":
                    self._entry(out, item)
                elif item.kind != "waypoint":
                    self._node(out, item)
        out.close("g")
        out.open("g", {"class": "legend", "aria-hidden": "true"})
        out.parts += legend.parts
        out.close("g")
        out.close("svg")
        return out.markup()

    def _description(self) -> str:
        flow, found = self.flow, self.layout.found
        parts = [flow.description.strip().rstrip(".") + "." if flow.description else ""]
        parts.append(f"{len(flow.nodes)} nodes; calls start at {flow.start}")
        if flow.on_error:
            parts[-1] += f", and go to {flow.on_error} when something fails"
        parts[-1] += "."
        unreachable = [n for n in flow.nodes if n not in found]
        if unreachable:
            parts.append(f"Unreachable: {', '.join(unreachable)}.")
        missing = [i.name for i in self.layout.items if i.kind == "missing"]
        if missing:
            parts.append(f"Named but missing: {', '.join(missing)}.")
        flagged = [n for n in flow.nodes if self.problems.get(n)]
        if flagged:
            parts.append(f"With problems: {', '.join(flagged)}.")
        if self.node_href is not None:
            parts.append("Each node is a link to its settings.")
        return " ".join(p for p in parts if p)

    def _defs(self, out: _Markup) -> None:
        out.open("defs", {})
        for name, colour in (("arrow", EDGE_INK), ("arrow-loop", LOOP_INK), ("arrow-error", ERROR)):
            out.open(
                "marker",
                {
                    "id": f"{self.prefix}-{name}",
                    "viewBox": "0 0 10 10",
                    "refX": "9",
                    "refY": "5",
                    "markerWidth": "8",
                    "markerHeight": "8",
                    "markerUnits": "userSpaceOnUse",
                    "orient": "auto",
                },
            )
            # Not inherited from the arrow's group: a marker's content takes its own paint.
            out.empty("path", {"d": "M0,1 L10,5 L0,9 z", "fill": colour, "stroke": "none"})
            out.close("marker")
        out.close("defs")

    # -- edges --------------------------------------------------------------------------

    def _edge(self, out: _Markup, labels: _Markup, edge: _Edge) -> None:
        source, target = edge.source, edge.target
        css = ["edge"]
        colour, marker = EDGE_INK, ""
        if edge.direction != "down":
            css.append("edge-loop")
            colour, marker = LOOP_INK, "arrow-loop"
        if target.kind == "missing":
            css.append("edge-missing")
            colour, marker = ERROR, "arrow-error"
        if edge.kind != "branch":
            css.append(f"edge-{edge.kind}")
        if source.kind == "node" and source.name not in self.layout.found:
            css.append("edge-unreachable")
        if edge.direction == "down":
            path, label_at, arrives = self._down_path(edge)
        elif edge.direction == "up":
            path, label_at, arrives = self._up_path(edge)
        else:
            path, label_at, arrives = self._self_path(edge)
        if not arrives:  # it joins the line of another arrow to the same place
            css.append("edge-joins")
            marker = "none"
        attributes = {"d": path}
        if colour != EDGE_INK:
            attributes["stroke"] = colour
        if marker:
            attributes["marker-end"] = (
                marker if marker == "none" else f"url(#{self.prefix}-{marker})"
            )
        if edge.kind == "on-error" or "edge-unreachable" in css or "edge-missing" in css:
            attributes["stroke-dasharray"] = "5 4"
        attributes.update(
            {"class": " ".join(css), "data-from": source.name, "data-to": target.name}
        )
        out.empty("path", attributes)
        if edge.label:
            self._label(labels, edge, label_at, colour)

    def _down_path(self, edge: _Edge) -> tuple[str, tuple[float, float, str], bool]:
        """The arrow's path, where its label goes, and whether it reaches its target (False:
        it joins the trunk of an arrow already drawn to the same place)."""
        source, target = edge.source, edge.target
        start_x = edge.out_x if source.kind != "entry" else source.x
        start_y = source.bottom - _inset_vertical(
            source.shape, source.width, source.height, start_x - source.x, bottom=True
        )
        end_y = target.top + _inset_vertical(
            target.shape, target.width, target.height, edge.in_x - target.x, bottom=False
        )
        path = [f"M{_fmt(start_x)},{_fmt(start_y)}"]
        here = (start_x, start_y)
        # Labelled arrows leave on a short straight stem that carries the label, so the
        # labels under a menu stay in a row however far their arrows go.
        stem_end = source.bottom + (LABEL_STEM if source.index in self.layout.labelled else 0)
        if stem_end > start_y + 0.5:
            path.append(f"L{_fmt(start_x)},{_fmt(stem_end)}")
            here = (start_x, stem_end)
        turn = edge.turn
        label_at = (start_x, source.bottom + 12, "middle")
        for waypoint in edge.waypoints:
            path.append(_curve(here, (waypoint.x, waypoint.top), turn))
            if waypoint.index in self.drawn:
                return " ".join(path), label_at, False  # joins a trunk already drawn
            self.drawn.add(waypoint.index)
            path.append(f"L{_fmt(waypoint.x)},{_fmt(waypoint.bottom)}")
            here, turn = (waypoint.x, waypoint.bottom), 0.5
        # The end comes straight down too, so the arrowhead points into the box.
        path.append(_curve(here, (edge.in_x, end_y - ARRIVAL_STEM), turn))
        path.append(f"L{_fmt(edge.in_x)},{_fmt(end_y)}")
        return " ".join(path), label_at, True

    def _up_path(self, edge: _Edge) -> tuple[str, tuple[float, float, str], bool]:
        source, target, layout = edge.source, edge.target, self.layout
        leaving = self._departure_y(source, edge.lane)
        arriving = target.top + target.height * 0.7
        lane_out = source.right + source.lane_base + edge.lane * LANE_GAP
        lane_in = target.right + target.lane_base
        start_x = source.right - _inset_side(
            source.shape, source.height, leaving - source.top - source.height / 2
        )
        end_x = target.right - _inset_side(
            target.shape, target.height, arriving - target.top - target.height / 2
        )
        label_at = (start_x + 4, leaving, "start")
        if edge.outside:
            channel = layout.channels[target.index]
            points = [(start_x, leaving), (lane_out, leaving), (lane_out, edge.joins_y)]
            points.append((channel, edge.joins_y))
            if layout.trunk_main[target.index] is not edge:
                if edge.order in self.channel_to:  # a part of the channel below the rest
                    points.append((channel, self.channel_to[edge.order]))
                return _rounded(points), label_at, False  # joins the channel's line
            trunk_y = layout.trunk_y[target.index]
            points += [(channel, trunk_y), (lane_in, trunk_y), (lane_in, arriving)]
            points.append((end_x, arriving))
            return _rounded(points), label_at, True
        bend = 6.0
        path = [
            f"M{_fmt(start_x)},{_fmt(leaving)} L{_fmt(lane_out - bend)},{_fmt(leaving)}",
            f"Q{_fmt(lane_out)},{_fmt(leaving)} {_fmt(lane_out)},{_fmt(leaving - bend)}",
            f"L{_fmt(lane_out)},{_fmt(layout.row_tops[source.row])}",
        ]
        here = (lane_out, layout.row_tops[source.row])
        for waypoint in edge.waypoints:
            path.append(_curve(here, (waypoint.x, waypoint.bottom)))
            if waypoint.index in self.drawn:
                return " ".join(path), label_at, False  # joins a trunk already drawn
            self.drawn.add(waypoint.index)
            path.append(f"L{_fmt(waypoint.x)},{_fmt(waypoint.top)}")
            here = (waypoint.x, waypoint.top)
        path.append(_curve(here, (lane_in, target.bottom)))
        path.append(
            f"L{_fmt(lane_in)},{_fmt(arriving + bend)} "
            f"Q{_fmt(lane_in)},{_fmt(arriving)} {_fmt(lane_in - bend)},{_fmt(arriving)} "
            f"L{_fmt(end_x)},{_fmt(arriving)}"
        )
        return " ".join(path), label_at, True

    def _departure_y(self, item: _Item, lane: int) -> float:
        """Loops leave from the upper half of the right side, the top one on the inner lane;
        the trunk of loops coming back enters lower down, so the lanes never cross there."""
        room = item.height * 0.7 - 10 - 14
        count = item.departures
        step = min(14.0, room / (count - 1)) if count > 1 else 0.0
        return item.top + 14 + lane * step

    def _self_path(self, edge: _Edge) -> tuple[str, tuple[float, float, str], bool]:
        item = edge.source
        middle = item.top + item.height / 2
        high, low = middle - 10, middle + 10
        x_high = item.left + _inset_side(item.shape, item.height, -10)
        x_low = item.left + _inset_side(item.shape, item.height, 10)
        reach = min(x_high, x_low) - LOOP_REACH
        path = (
            f"M{_fmt(x_high)},{_fmt(high)} C{_fmt(reach)},{_fmt(high - 16)} "
            f"{_fmt(reach)},{_fmt(low + 16)} {_fmt(x_low)},{_fmt(low)}"
        )
        return path, (reach + 4, middle, "end"), True

    def _label(
        self, labels: _Markup, edge: _Edge, at: tuple[float, float, str], colour: str
    ) -> None:
        """A pill with the branch's name, on the arrow: white under the text, so it reads."""
        x, y, anchor = at
        width = _label_width(edge.label)
        left = x - width / 2 if anchor == "middle" else (x if anchor == "start" else x - width)
        labels.open(
            "g", {"class": "edge-label", "data-from": edge.source.name, "data-to": edge.target.name}
        )
        labels.empty(
            "rect",
            {
                "x": _fmt(left),
                "y": _fmt(y - 8.5),
                "width": _fmt(width),
                "height": "17",
                "rx": "8.5",
                "fill": "#ffffff",
                "stroke": colour,
            },
        )
        labels.text(edge.label, left + width / 2, y + 4)  # 11px bold, from the group
        labels.close("g")

    # -- nodes --------------------------------------------------------------------------

    def _entry(self, out: _Markup, item: _Item) -> None:
        start = item.name == "start"
        out.open("g", {"class": f"flow-entry flow-entry-{'start' if start else 'error'}"})
        target = self.flow.start if start else self.flow.on_error
        out.element(
            "title", f"{'Calls start' if start else 'When something fails, calls go'} at {target}"
        )
        paint = {"fill": INK, "stroke": INK} if start else {"fill": "#fff7ed", "stroke": "#c2410c"}
        if not start:
            paint["stroke_dasharray"] = "4 3"
        out.shape("pill", item.x, item.top, item.width, item.height, stroke_width="1.5", **paint)
        colour = "#ffffff" if start else "#9a3412"
        out.text(item.name, item.x, item.top + 17.5, size=12, bold=True, fill=colour)
        out.close("g")

    def _node(self, out: _Markup, item: _Item) -> None:
        node, node_id = item.node, item.name
        kind = node.type if node is not None else "missing"
        family = FAMILIES[item.shape]
        fill, stroke = PALETTE[kind]
        css = ["node", f"node-{kind}"]
        if family not in ("missing", kind):
            css.append(f"node-{family}")
        is_reachable = node is None or node_id in self.layout.found
        problems = [_clean(p) for p in self.problems.get(node_id, ()) if _clean(p)] if node else []
        stroke_width = "2"
        if node is None:
            css.append("missing")
        elif not is_reachable:
            css.append("unreachable")
        if problems:
            css.append("has-problem")
            stroke, stroke_width = ERROR, "3"
        chosen = node is not None and node_id == self.selected
        if chosen:
            css.append("selected")
            stroke_width = "3"
        type_line = kind if node is not None else MISSING
        if not is_reachable:
            type_line += " · unreachable"
        detail = _summary(node)
        title = f"{node_id} ({type_line})" + (f": {detail}" if detail else "")
        if problems:
            title += ". Problems: " + "; ".join(problems)
        desc_id = f"{self.prefix}-node-{node_id}-desc"
        linked = self.node_href is not None and node is not None
        if linked:
            assert self.node_href is not None
            link = {
                "href": self.node_href(node_id),
                "class": "node-link",
                "aria-label": f"Edit node {node_id} ({kind})",
                "aria-describedby": desc_id,
            }
            if chosen:
                link["aria-current"] = "true"
            out.open("a", link)
        out.open("g", {"class": " ".join(css), "data-node": node_id})
        out.element("title", title)
        out.element("desc", self._node_description(item), {"id": desc_id})
        paint = {"fill": fill, "stroke": stroke, "stroke_width": stroke_width}
        if node is None or not is_reachable:
            paint.update(stroke_dasharray="6 4", fill_opacity="0.6")
        out.shape(
            item.shape, item.x, item.top, item.width, item.height, class_="node-shape", **paint
        )
        inner = item.width - 20
        out.text(
            _fit_text(node_id, inner, 13, bold=True),
            item.x,
            item.top + 21,
            bold=True,
            css="node-id",
        )
        out.text(
            _fit_text(type_line, inner, 11.5),
            item.x,
            item.top + 37,
            size=11.5,
            fill=ERROR if node is None else (SOFT_INK if is_reachable else "#64748b"),
            css="node-type",
        )
        if detail:
            out.text(
                _fit_text(detail, inner - 4, 11),
                item.x,
                item.top + 53,
                size=11,
                css="node-summary",
            )
        if node is not None and node.description:
            out.text(
                _fit_text(node.description, inner - 4, 10.5),
                item.x,
                item.top + 67,
                size=10.5,
                fill=SOFT_INK,
                italic=True,
                css="node-note",
            )
        if problems:
            bx, by = item.right - 6, item.top + 4
            out.open("g", {"class": "problem-badge"})
            out.empty(
                "circle",
                {
                    "cx": _fmt(bx),
                    "cy": _fmt(by),
                    "r": "10",
                    "fill": ERROR,
                    "stroke": "#ffffff",
                    "stroke-width": "2",
                },
            )
            out.text("!", bx, by + 5, size=14, bold=True, fill="#ffffff")
            out.close("g")
        out.close("g")
        if linked:
            out.close("a")

    def _node_description(self, item: _Item) -> str:
        """The node in words, branches included: the arrows are hidden from screen readers."""
        node = item.node
        if node is None:
            return f"{item.name} is named by a branch but no node has that id."
        parts = [f"{item.name}, {node.type}"]
        if detail := _summary(node):
            parts[0] += f": {detail}"
        if node.description:
            parts.append(node.description)
        exits = node.exits()
        if exits:
            parts.append("Goes to: " + ", ".join(f"{b} → {t}" for b, t in exits.items()))
        elif is_terminal(node):
            parts.append("Ends this flow's part of the call")
        if item.name not in self.layout.found:
            parts.append("Unreachable: no way from start leads here")
        problems = self.problems.get(item.name) or ()
        if problems:
            parts.append("Problems: " + "; ".join(problems))
        return ". ".join(_clean(p).rstrip(".") for p in parts) + "."

    # -- legend -------------------------------------------------------------------------

    def _legend(self, out: _Markup, top: float, width: float) -> tuple[float, float]:
        """A key to the shapes and colours of the types in this flow, and to the marks: its
        height and width."""
        items = self.layout.items
        shapes: dict[str, str] = {}
        for item in items:
            if item.node is not None:
                shapes.setdefault(item.node.type, item.shape)
        entries = [(kind, shapes[kind], kind) for kind in TYPE_ORDER if kind in shapes]
        if any(i.kind == "node" and i.name not in self.layout.found for i in items):
            entries.append(("unreachable", "rect", "unreachable"))
        if any(i.kind == "missing" for i in items):
            entries.append(("missing", "missing", MISSING))
        if any(self.problems.get(i.name) for i in items if i.kind == "node"):
            entries.append(("problem", "rect", "has problems"))
        if any(e.direction != "down" for e in self.layout.edges):
            entries.append(("loop", "", "goes back"))
        x, y = MARGIN, top + LEGEND_GAP - MARGIN
        widest = 0.0
        out.text("Key", x, y + 13, size=12, bold=True, anchor="start", fill=SOFT_INK)
        x += 36
        for key, shape, label in entries:
            room = 30 + 6 + _text_width(label, 11.5) + 18
            if x + room > width - MARGIN and x > MARGIN + 36:
                x, y = MARGIN + 36, y + 26
            out.open("g", {"class": f"legend-item legend-{key}"})
            if key == "loop":
                out.empty(
                    "path",
                    {
                        "d": f"M{_fmt(x)},{_fmt(y + 9)} h30",
                        "stroke": LOOP_INK,
                        "stroke-width": "1.6",
                        "fill": "none",
                        "marker-end": f"url(#{self.prefix}-arrow-loop)",
                    },
                )
            else:
                fill, stroke = PALETTE.get(key, ("#ffffff", SOFT_INK))
                paint = {"fill": fill, "stroke": stroke, "stroke_width": "1.5"}
                if key == "problem":
                    paint.update(stroke=ERROR, stroke_width="2")
                if key in ("unreachable", "missing"):
                    paint["stroke_dasharray"] = "4 3"
                out.shape(shape, x + 15, y, 30, 18, **paint)
                if key == "problem":
                    circle = {"cx": _fmt(x + 28), "cy": _fmt(y + 1), "r": "6", "fill": ERROR}
                    out.empty("circle", circle)
                    out.text("!", x + 28, y + 5, size=10, bold=True, fill="#ffffff")
            out.text(label, x + 36, y + 13, size=11.5, anchor="start", fill=INK)
            out.close("g")
            x += room
            widest = max(widest, x + MARGIN)
        return y + 18 + MARGIN - top, widest


def _rounded(points: list[tuple[float, float]], radius: float = 6.0) -> str:
    """A path through `points` (turning at right angles) with rounded corners."""
    path = [f"M{_fmt(points[0][0])},{_fmt(points[0][1])}"]
    for (x0, y0), (x1, y1), (x2, y2) in zip(points, points[1:], points[2:], strict=False):
        r = min(radius, math.dist((x0, y0), (x1, y1)) / 2, math.dist((x1, y1), (x2, y2)) / 2)
        before = _toward((x1, y1), (x0, y0), r)
        after = _toward((x1, y1), (x2, y2), r)
        path.append(
            f"L{_fmt(before[0])},{_fmt(before[1])} "
            f"Q{_fmt(x1)},{_fmt(y1)} {_fmt(after[0])},{_fmt(after[1])}"
        )
    path.append(f"L{_fmt(points[-1][0])},{_fmt(points[-1][1])}")
    return " ".join(path)


def _toward(start: tuple[float, float], end: tuple[float, float], by: float) -> tuple[float, float]:
    length = math.dist(start, end) or 1.0
    return (
        start[0] + (end[0] - start[0]) * by / length,
        start[1] + (end[1] - start[1]) * by / length,
    )


def _curve(start: tuple[float, float], end: tuple[float, float], turn: float = 0.5) -> str:
    """A cubic from `start` to `end` leaving and arriving vertically: the layered look."""
    (x1, y1), (x2, y2) = start, end
    middle = y1 + (y2 - y1) * turn
    return f"C{_fmt(x1)},{_fmt(middle)} {_fmt(x2)},{_fmt(middle)} {_fmt(x2)},{_fmt(y2)}"


def render_svg(
    flow: Flow,
    *,
    node_href: Callable[[str], str] | None = None,
    problems: Mapping[str, Sequence[str]] | None = None,
    selected: str | None = None,
) -> str:
    """The flow as an inline `<svg>` element for an HTML page.

    `node_href` makes every node a keyboard-focusable link (e.g. to its settings form);
    `problems` maps node ids to messages, flagged on the node and named in its title;
    `selected` is drawn with a ring. Every node is named by its id; shapes and colours tell
    the kinds apart, with a key below; unreachable nodes are dashed and say so; a branch to a
    node that does not exist ends in a red placeholder.
    """
    layout = _Layout(flow)
    drawing = _Drawing(layout, node_href, problems or {}, selected)
    return drawing.svg()


__all__ = ["render_svg"]
