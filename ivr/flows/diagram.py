"""A flow drawn as inline SVG for the console: layered top to bottom, one shape and colour per
kind of node, arrows labelled with menu keys and branch names.

Pure (no Flask, no Redis) and deterministic: the same flow always gives the same markup. No
`style` attribute anywhere: the console's Content-Security-Policy forbids inline styles, so
colours are presentation attributes, with CSS classes for the stylesheet to refine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ivr.flows.lint import is_terminal, reachable
from ivr.flows.model import Flow, Node
from ivr.flows.render import summary

BOX_WIDTH, BOX_HEIGHT = 210, 66
GAP_X, GAP_Y = 46, 78
MARGIN = 24
MARKER_HEIGHT = 34  # the start / on-error markers above the first layer

# Fill and stroke per kind of node: waits for keys (blue), identifies or verifies (purple),
# decides on its own (amber), speaks or jumps (grey), ends the flow's part (green).
_PALETTE = {
    "menu": ("#dbe9f8", "#0b4f8a"),
    "collect": ("#dbe9f8", "#0b4f8a"),
    "language": ("#dbe9f8", "#0b4f8a"),
    "identify": ("#ebe0f5", "#5b2a86"),
    "authenticate": ("#ebe0f5", "#5b2a86"),
    "hours": ("#fbecc9", "#8a5a00"),
    "say": ("#eef1f4", "#4a5563"),
    "play": ("#eef1f4", "#4a5563"),
    "goto": ("#ffffff", "#4a5563"),
    "agent": ("#d7efdd", "#1d6b34"),
    "transfer": ("#d7efdd", "#1d6b34"),
    "hangup": ("#f4e3e1", "#7a2e27"),
}
_ERROR = "#b3261e"


@dataclass
class _Box:
    node_id: str
    node: Node | None  # None: a target that names no node
    layer: int
    x: float = 0.0
    y: float = 0.0


def _edge_label(branch: str) -> str:
    if branch.startswith("key "):
        return branch[4:]
    return "" if branch in ("next", "goto") else branch


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _layers(flow: Flow) -> dict[str, int]:
    """Layer of each node: longest path from start over forward edges (a DFS finds the back
    edges of loops and leaves them out), unreachable nodes below everything."""
    nodes = flow.nodes
    roots = [n for n in (flow.start, flow.on_error) if n and n in nodes]
    order: list[str] = []  # post-order
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    back: set[tuple[str, str]] = set()
    for root in roots + list(nodes):
        if root in state:
            continue
        stack = [(root, iter(list(nodes[root].exits().values())))]
        state[root] = 1
        while stack:
            current, children = stack[-1]
            advanced = False
            for child in children:
                if child not in nodes:
                    continue
                if state.get(child) == 1:
                    back.add((current, child))
                elif child not in state:
                    state[child] = 1
                    stack.append((child, iter(list(nodes[child].exits().values()))))
                    advanced = True
                    break
            if not advanced:
                state[current] = 2
                order.append(current)
                stack.pop()
    found = reachable(flow)
    layer: dict[str, int] = dict.fromkeys(nodes, 0)
    for node_id in reversed(order):  # a topological order of the forward edges
        for child in nodes[node_id].exits().values():
            if child in nodes and (node_id, child) not in back:
                layer[child] = max(layer[child], layer[node_id] + 1)
    deepest = max((layer[n] for n in found), default=0)
    for node_id in nodes:
        if node_id not in found:
            layer[node_id] += deepest + 1
    return layer


def _place(flow: Flow) -> tuple[dict[str, _Box], float, float]:
    layer = _layers(flow)
    boxes: dict[str, _Box] = {n: _Box(n, node, layer[n]) for n, node in flow.nodes.items()}
    for node_id, node in flow.nodes.items():
        for target in node.exits().values():
            if target not in boxes:
                boxes[target] = _Box(target, None, boxes[node_id].layer + 1)
    # Breadth-first discovery order within a layer, then one barycenter pass downwards.
    seen: dict[str, int] = {}
    queue = deque(n for n in (flow.start, flow.on_error) if n)
    while queue:
        current = queue.popleft()
        if current in seen:
            continue
        seen[current] = len(seen)
        node = flow.nodes.get(current)
        if node is not None:
            queue.extend(node.exits().values())
    rank = {n: seen.get(n, len(seen) + i) for i, n in enumerate(boxes)}
    by_layer: dict[int, list[str]] = {}
    for node_id in sorted(boxes, key=lambda n: rank[n]):
        by_layer.setdefault(boxes[node_id].layer, []).append(node_id)
    parents: dict[str, list[str]] = {}
    for node_id, node in flow.nodes.items():
        for target in node.exits().values():
            parents.setdefault(target, []).append(node_id)
    position: dict[str, float] = {}
    for depth in sorted(by_layer):
        row = by_layer[depth]

        def barycenter(node_id: str) -> tuple[float, int]:
            above = [position[p] for p in parents.get(node_id, []) if p in position]
            return (sum(above) / len(above) if above else float(rank[node_id]), rank[node_id])

        if depth:
            row.sort(key=barycenter)
        for index, node_id in enumerate(row):
            position[node_id] = index
    widest = max(len(row) for row in by_layer.values())
    width = MARGIN * 2 + widest * BOX_WIDTH + (widest - 1) * GAP_X + 60  # room for loops
    for depth, row in by_layer.items():
        offset = (widest - len(row)) * (BOX_WIDTH + GAP_X) / 2
        for index, node_id in enumerate(row):
            box = boxes[node_id]
            box.x = MARGIN + offset + index * (BOX_WIDTH + GAP_X)
            box.y = MARGIN + MARKER_HEIGHT + depth * (BOX_HEIGHT + GAP_Y)
    height = MARGIN * 2 + MARKER_HEIGHT + (max(by_layer) + 1) * (BOX_HEIGHT + GAP_Y) - GAP_Y
    return boxes, width, height


def _shape(box: _Box, fill: str, stroke: str, dashed: bool, width: int) -> str:
    x, y, w, h = box.x, box.y, BOX_WIDTH, BOX_HEIGHT
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{dash} class="shape"'
    node = box.node
    if node is not None and node.type == "hours":  # a decision: a hexagon
        points = (
            f"{x + 14},{y} {x + w - 14},{y} {x + w},{y + h / 2} {x + w - 14},{y + h} "
            f"{x + 14},{y + h} {x},{y + h / 2}"
        )
        return f'<polygon points="{points}" {common}/>'
    radius = 4
    if node is not None and node.waits_for_keys:
        radius = 16
    elif node is not None and is_terminal(node):
        radius = h / 2
    return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{radius}" {common}/>'


def render_svg(
    flow: Flow,
    *,
    node_href: Callable[[str], str] | None = None,
    problems: Mapping[str, Sequence[str]] | None = None,
    selected: str | None = None,
) -> str:
    """The flow as an `<svg>` element: every node named, kinds told apart by shape and colour,
    menu keys on the arrows, unreachable nodes dashed and marked, missing targets in red."""
    problems = problems or {}
    boxes, width, height = _place(flow)
    found = reachable(flow)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow-diagram" role="group" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'font-family="system-ui, sans-serif" font-size="13" '
        f"aria-label={quoteattr(f'Flow {flow.name}')}>",
        f"<title>{escape(f'Flow {flow.name}')}</title>",
        f"<desc>{escape(f'{len(flow.nodes)} nodes, starting at {flow.start}')}</desc>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#4a5563"/></marker></defs>',
    ]
    parts += _markers(flow, boxes)
    parts += _edges(flow, boxes, width)
    for node_id, box in boxes.items():
        parts.append(_node(box, node_id in found, problems.get(node_id, ()), selected, node_href))
    parts.append("</svg>")
    return "".join(parts)


def _markers(flow: Flow, boxes: dict[str, _Box]) -> list[str]:
    out = []
    for label, target, dashed in (("start", flow.start, False), ("on error", flow.on_error, True)):
        box = boxes.get(target or "")
        if box is None:
            continue
        cx = box.x + (BOX_WIDTH / 2 if label == "start" else BOX_WIDTH - 30)
        top = box.y - MARKER_HEIGHT - 6
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(
            f'<g class="marker"><text x="{cx}" y="{top + 12}" text-anchor="middle" '
            f'fill="#1b1f24" font-weight="600">{escape(label)}</text>'
            f'<line x1="{cx}" y1="{top + 16}" x2="{cx}" y2="{box.y}" stroke="#4a5563" '
            f'stroke-width="1.5"{dash} marker-end="url(#arrow)"/></g>'
        )
    return out


def _edges(flow: Flow, boxes: dict[str, _Box], width: float) -> list[str]:
    out = []
    loop_lane = width - 24
    for node_id, node in flow.nodes.items():
        source = boxes[node_id]
        exits = list(node.exits().items())
        for index, (branch, target) in enumerate(exits):
            end = boxes[target]
            spread = (index - (len(exits) - 1) / 2) * min(24, BOX_WIDTH / (len(exits) + 1))
            x1, y1 = source.x + BOX_WIDTH / 2 + spread, source.y + BOX_HEIGHT
            label = _edge_label(branch)
            if end.layer > source.layer:
                x2, y2 = end.x + BOX_WIDTH / 2, end.y
                mid_y = y1 + GAP_Y / 2
                path = (
                    f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid_y:.1f} "
                    f"{x2:.1f},{mid_y:.1f} {x2:.1f},{y2:.1f}"
                )
                lx, ly = (x1 + x2) / 2, mid_y + (y2 - y1 - GAP_Y) / 2
                css = "edge"
            else:  # a loop back up (or sideways): round the right-hand side
                x1, y1 = source.x + BOX_WIDTH, source.y + BOX_HEIGHT / 2 + spread / 3
                x2, y2 = end.x + BOX_WIDTH, end.y + BOX_HEIGHT / 2 - 8
                lane = max(x1, x2) + 30 + (index * 6)
                lane = min(lane, loop_lane)
                path = (
                    f"M{x1:.1f},{y1:.1f} C{lane:.1f},{y1:.1f} {lane:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
                )
                lx, ly = lane - 6, (y1 + y2) / 2
                css = "edge edge-back"
            colour = _ERROR if end.node is None else "#4a5563"
            out.append(
                f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5" '
                f'marker-end="url(#arrow)" class="{css}"/>'
            )
            if label:
                text_width = 8 + 7 * len(label)
                out.append(
                    f'<g class="edge-label"><rect x="{lx - text_width / 2:.1f}" y="{ly - 10:.1f}" '
                    f'width="{text_width}" height="18" rx="9" fill="#ffffff" stroke="{colour}"/>'
                    f'<text x="{lx:.1f}" y="{ly + 3:.1f}" text-anchor="middle" fill="#1b1f24" '
                    f'font-size="12" font-weight="600">{escape(label)}</text></g>'
                )
    return out


def _node(
    box: _Box,
    is_reachable: bool,
    node_problems: Sequence[str],
    selected: str | None,
    node_href: Callable[[str], str] | None,
) -> str:
    node = box.node
    kind = node.type if node is not None else "missing"
    fill, stroke = _PALETTE.get(kind, ("#ffffff", _ERROR))
    classes = ["node", f"node-{kind}"]
    width = 2
    if node is None:
        stroke, classes = _ERROR, [*classes, "missing"]
    if not is_reachable and node is not None:
        classes.append("unreachable")
    if node_problems:
        stroke, width = _ERROR, 3
        classes.append("has-problem")
    if selected == box.node_id:
        width = 4
        classes.append("selected")
    dashed = node is None or not is_reachable or kind == "goto"
    detail = summary(node) if node is not None else ""
    second = kind if node is not None else "no such node"
    if node is not None and not is_reachable:
        second += " · unreachable"
    title = f"{box.node_id} ({second})" + (f": {detail}" if detail else "")
    if node_problems:
        title += ". Problems: " + "; ".join(node_problems)
    cx = box.x + BOX_WIDTH / 2
    body = [
        f"<title>{escape(title)}</title>",
        _shape(box, fill, stroke, dashed, width),
        f'<text x="{cx}" y="{box.y + 22}" text-anchor="middle" font-weight="700" '
        f'fill="#1b1f24">{escape(_truncate(box.node_id, 26))}</text>',
        f'<text x="{cx}" y="{box.y + 39}" text-anchor="middle" '
        f'fill="{stroke if node is None else "#4a5563"}" font-size="12">{escape(second)}</text>',
    ]
    if detail:
        body.append(
            f'<text x="{cx}" y="{box.y + 55}" text-anchor="middle" fill="#1b1f24" '
            f'font-size="11">{escape(_truncate(detail, 32))}</text>'
        )
    if node_problems:
        bx, by = box.x + BOX_WIDTH - 6, box.y + 6
        body.append(
            f'<circle cx="{bx}" cy="{by}" r="10" fill="{_ERROR}"/>'
            f'<text x="{bx}" y="{by + 5}" text-anchor="middle" fill="#ffffff" '
            f'font-weight="700">!</text>'
        )
    group = f'<g class="{" ".join(classes)}" data-node={quoteattr(box.node_id)}>{"".join(body)}</g>'
    if node_href is None or node is None:
        return group
    label = f"Edit node {box.node_id} ({kind})"
    return (
        f'<a href={quoteattr(node_href(box.node_id))} class="node-link" '
        f"aria-label={quoteattr(label)}>{group}</a>"
    )


__all__ = ["render_svg"]
