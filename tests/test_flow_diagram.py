"""The console's flow diagram: every node named and told apart by shape and colour, arrows
labelled with keys and branches, unreachable and missing nodes marked, problems flagged,
links for the keyboard, no inline styles, all text escaped, the same bytes every time, and
fast on big flows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ivr.flows.diagram import render_svg
from ivr.flows.loader import parse_flow_file
from ivr.flows.model import Flow

SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLOW = ROOT / "flows" / "default.yaml"


def hours_node(timezone: str, weekly: dict[str, str], open_: str, closed: str) -> dict:
    """An hours node: to `open_` within the `weekly` hours (in `timezone`), else to `closed`."""
    return {
        "type": "hours",
        "timezone": timezone,
        "weekly": weekly,
        "open": open_,
        "closed": closed,
    }


NODES = {
    "welcome": {"type": "say", "prompt": "flow.welcome", "next": "main_menu"},
    "main_menu": {
        "type": "menu",
        "greeting": "flow.main_menu.long",
        "options": {"1": "who", "2": "info", "9": "main_menu"},
        "exit": "goodbye",
    },
    "info": {"type": "say", "prompt": ["flow.info"], "next": "back"},
    "back": {"type": "goto", "target": "main_menu"},
    "who": {"type": "identify", "found": "verify", "not_found": "desk"},
    "verify": {"type": "authenticate", "success": "open_now", "failure": "goodbye"},
    "open_now": hours_node("America/New_York", {"mon-fri": "08:00-18:00"}, "desk", "goodbye"),
    "desk": {"type": "agent", "queue": "support"},
    "goodbye": {"type": "hangup", "prompt": "flow.goodbye"},
}


def make_flow(nodes: dict | None = None, **fields: object) -> Flow:
    nodes = NODES if nodes is None else nodes
    data = {"name": "sample", "start": next(iter(nodes)), "nodes": nodes, **fields}
    return Flow.model_validate(data)


def default_flow() -> Flow:
    return parse_flow_file(DEFAULT_FLOW)[0]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def node_groups(root: ET.Element) -> dict[str, ET.Element]:
    """Node id -> its `<g class="node ...">`, placeholders of missing nodes included."""
    return {
        g.get("data-node"): g
        for g in root.iter(f"{SVG}g")
        if "node" in (g.get("class") or "").split()
    }


def classes(element: ET.Element) -> set[str]:
    return set((element.get("class") or "").split())


def texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iter(f"{SVG}text")]


def shape(group: ET.Element) -> ET.Element:
    return next(e for e in group if "node-shape" in classes(e))


def box(element: ET.Element) -> tuple[float, float, float, float]:
    """The bounding box (left, top, right, bottom) of a rect or polygon."""
    if element.tag == f"{SVG}rect":
        x, y = float(element.get("x")), float(element.get("y"))
        return x, y, x + float(element.get("width")), y + float(element.get("height"))
    points = [tuple(map(float, p.split(","))) for p in element.get("points").split()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def edge_labels(root: ET.Element) -> list[tuple[str, str, str]]:
    """(from, label, to) of every labelled arrow."""
    return [
        (g.get("data-from"), "".join(texts(g)), g.get("data-to"))
        for g in root.iter(f"{SVG}g")
        if "edge-label" in classes(g)
    ]


def edges(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(f"{SVG}path") if "edge" in classes(p)]


# Nodes


def test_every_node_is_named_in_the_svg() -> None:
    flow = default_flow()
    root = parse(render_svg(flow))
    groups = node_groups(root)
    assert set(groups) == set(flow.nodes)
    for node_id, node in flow.nodes.items():
        group = groups[node_id]
        assert texts(group)[:2] == [node_id, node.type]
        title = group.find(f"{SVG}title").text
        assert title.startswith(f"{node_id} ({node.type})")


def test_each_node_shows_its_summary_cut_to_fit() -> None:
    flow = make_flow(
        {
            "ask": {
                "type": "collect",
                "prompt": "flow.card.ask_for_the_last_four_digits_of_the_card",
                "store_as": "card_last_digits",
                "next": "end",
                "on_failure": "end",
            },
            "end": {"type": "hangup", "prompt": "flow.goodbye"},
        }
    )
    groups = node_groups(parse(render_svg(flow)))
    summary = texts(groups["ask"])[2]
    assert summary.endswith("…")
    assert "flow.card.ask_for_the_last_four_digits_of_the_card".startswith(summary[:-1])
    assert texts(groups["end"])[2] == "flow.goodbye"
    # The whole summary is still in the title, for the tooltip and screen readers.
    assert "into card_last_digits" in groups["ask"].find(f"{SVG}title").text


def test_types_are_visually_distinct() -> None:
    nodes = {
        "start_here": {"type": "say", "prompt": "p", "next": "menu"},
        "menu": {
            "type": "menu",
            "greeting": "g",
            "options": {"1": "lang", "2": "collect", "3": "who", "4": "jump", "5": "played"},
            "exit": "bye",
        },
        "lang": {"type": "language", "options": {"1": "en-US"}, "next": "bye"},
        "collect": {
            "type": "collect",
            "prompt": "p",
            "store_as": "v",
            "next": "bye",
            "on_failure": "bye",
        },
        "who": {"type": "identify", "found": "auth", "not_found": "bye"},
        "auth": {"type": "authenticate", "success": "hours", "failure": "bye"},
        "hours": hours_node("UTC", {"mon": "09:00-17:00"}, "agent", "transfer"),
        "agent": {"type": "agent", "queue": "q"},
        "transfer": {"type": "transfer", "to_flow": "other"},
        "jump": {"type": "goto", "target": "bye"},
        "played": {"type": "play", "prompt": "p", "next": "bye"},
        "bye": {"type": "hangup"},
    }
    flow = make_flow(nodes)
    root = parse(render_svg(flow))
    groups = node_groups(root)
    looks = {}
    for node_id, group in groups.items():
        kind = flow.nodes[node_id].type
        assert f"node-{kind}" in classes(group)
        outline = shape(group)
        corners = len(outline.get("points", "").split()) or None
        looks[kind] = (outline.tag, corners, outline.get("fill"), outline.get("stroke"))
    # Every type its own colours...
    assert len({(fill, stroke) for *_, fill, stroke in looks.values()}) == len(looks)
    # ...and one shape per family: asking for keys, deciding, speaking, jumping, ending.
    family_shapes = {
        "waits": {
            looks[k][:2] for k in ("menu", "language", "collect", "identify", "authenticate")
        },
        "decides": {looks["hours"][:2]},
        "speaks": {looks[k][:2] for k in ("say", "play")},
        "jumps": {looks["goto"][:2]},
    }
    assert all(len(shapes) == 1 for shapes in family_shapes.values())
    assert len({next(iter(s)) for s in family_shapes.values()}) == len(family_shapes)
    assert looks["hours"][:2] == (f"{SVG}polygon", 6)
    # The ends of the flow's part of the call are pills: corners as round as the box is high.
    for kind in ("agent", "transfer", "hangup"):
        outline = shape(groups[next(n for n in nodes if nodes[n]["type"] == kind)])
        assert float(outline.get("rx")) * 2 == pytest.approx(float(outline.get("height")))
    say_outline = shape(groups["start_here"])
    assert float(say_outline.get("rx")) < 10
    # A key tells them apart too.
    legend = next(g for g in root.iter(f"{SVG}g") if "legend" in classes(g))
    assert set(texts(legend)) >= {n["type"] for n in nodes.values()}


def test_no_boxes_overlap() -> None:
    for flow in (default_flow(), make_flow(), _tangled_flow()):
        root = parse(render_svg(flow, problems={n: ["x"] for n in flow.nodes}))
        boxes = [box(shape(g)) for g in node_groups(root).values()]
        boxes += [
            box(next(iter(g)) if g[0].tag != f"{SVG}title" else g[1])
            for g in root.iter(f"{SVG}g")
            if "flow-entry" in classes(g)
        ]
        for i, (l1, t1, r1, b1) in enumerate(boxes):
            for l2, t2, r2, b2 in boxes[i + 1 :]:
                assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, (boxes[i], (l2, t2, r2, b2))


def test_the_svg_is_sized_to_fit_everything() -> None:
    root = parse(render_svg(_tangled_flow()))
    width, height = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    for group in node_groups(root).values():
        left, top, right, bottom = box(shape(group))
        assert left >= 0 and right <= width and top >= 0 and bottom <= height


# Arrows


def test_menu_keys_label_the_arrows() -> None:
    labels = edge_labels(parse(render_svg(make_flow())))
    from_menu = {(label, to) for source, label, to in labels if source == "main_menu"}
    assert from_menu == {("1", "who"), ("2", "info"), ("9", "main_menu"), ("exit", "goodbye")}
    assert not any(label.startswith("key ") for _, label, _ in labels)


def test_branches_are_named_on_their_arrows() -> None:
    labels = set(edge_labels(parse(render_svg(make_flow()))))
    assert {
        ("who", "found", "verify"),
        ("who", "not found", "desk"),
        ("verify", "verified", "open_now"),
        ("verify", "not verified", "goodbye"),
        ("open_now", "open", "desk"),
        ("open_now", "closed", "goodbye"),
    } <= labels
    # A node's only way on needs no name: no "next" on a say, no "goto" on a goto.
    assert not {source for source, *_ in labels} & {"welcome", "info", "back"}


def test_keys_to_the_same_node_share_one_arrow() -> None:
    nodes = {
        "menu": {"type": "menu", "greeting": "g", "options": {"1": "a", "2": "a"}, "exit": "a"},
        "a": {"type": "hangup"},
    }
    root = parse(render_svg(make_flow(nodes)))
    assert edge_labels(root) == [("menu", "1, 2, exit", "a")]
    assert len([p for p in edges(root) if p.get("data-from") == "menu"]) == 1


def test_every_branch_has_an_arrow_with_a_head() -> None:
    flow = default_flow()
    root = parse(render_svg(flow))
    markers = {m.get("id") for m in root.iter(f"{SVG}marker")}
    drawn = {(p.get("data-from"), p.get("data-to")) for p in edges(root)}
    for node_id, node in flow.nodes.items():
        for target in node.exits().values():
            assert (node_id, target) in drawn
    group = next(g for g in root.iter(f"{SVG}g") if "edges" in classes(g))
    headed = set()
    for path in edges(root):
        marker = path.get("marker-end", group.get("marker-end"))  # inherited from the group
        if "edge-joins" in classes(path):  # merges into another arrow to the same node
            assert marker == "none"
            continue
        assert marker[len("url(#") : -1] in markers
        headed.add(path.get("data-to"))
    assert headed == {t for node in flow.nodes.values() for t in node.exits().values()} | {
        flow.start,
        flow.on_error,
    }


def test_loops_are_drawn_back_up_the_side() -> None:
    root = parse(render_svg(make_flow()))
    loops = {
        (p.get("data-from"), p.get("data-to")) for p in edges(root) if "edge-loop" in classes(p)
    }
    # back -> main_menu goes up; 9 on the menu comes back to the menu itself.
    assert loops == {("back", "main_menu"), ("main_menu", "main_menu")}
    back = next(p for p in edges(root) if p.get("data-from") == "back")
    groups = node_groups(root)
    menu_right = box(shape(groups["main_menu"]))[2]
    xs = [float(x) for x in re.findall(r"[-\d.]+", back.get("d"))[::2]]
    assert max(xs) > menu_right  # round the right-hand side, not through the boxes


def test_start_and_on_error_markers_point_at_their_nodes() -> None:
    root = parse(render_svg(default_flow()))
    start = next(p for p in edges(root) if "edge-start" in classes(p))
    on_error = next(p for p in edges(root) if "edge-on-error" in classes(p))
    assert start.get("data-to") == "welcome"
    assert on_error.get("data-to") == "agent_unverified"
    assert on_error.get("stroke-dasharray") and not start.get("stroke-dasharray")
    entries = [g for g in root.iter(f"{SVG}g") if "flow-entry" in classes(g)]
    assert [texts(g) for g in entries] == [["start"], ["on error"]]


def test_cycles_and_long_chains_render() -> None:
    # 400 nodes in a chain that loops back to its start, a two-node cycle and a self-loop:
    # nothing recursive in the layout, so no recursion limit.
    nodes = {f"n{i}": {"type": "say", "prompt": "p", "next": f"n{i + 1}"} for i in range(399)}
    nodes["n399"] = {"type": "goto", "target": "n0"}
    nodes["n5"] = {"type": "menu", "greeting": "g", "options": {"1": "n6", "2": "n5"}, "exit": "n4"}
    root = parse(render_svg(make_flow(nodes)))
    assert len(node_groups(root)) == 400
    loops = {
        (p.get("data-from"), p.get("data-to")) for p in edges(root) if "edge-loop" in classes(p)
    }
    assert loops == {("n399", "n0"), ("n5", "n5"), ("n5", "n4")}
    tops = {n: box(shape(g))[1] for n, g in node_groups(root).items()}
    assert all(tops[f"n{i}"] < tops[f"n{i + 1}"] for i in range(399))


def test_large_flows_render_every_node() -> None:
    """A 200-node flow renders whole (no timing asserted here: the suite runs on busy machines;
    rendering 200 nodes took 55-80 ms of CPU when measured)."""
    root = parse(render_svg(_big_flow(200)))
    assert len(node_groups(root)) == 200


# Reachability, missing nodes, problems


def test_unreachable_nodes_are_marked() -> None:
    nodes = {
        **NODES,
        "orphan": {"type": "say", "prompt": "p", "next": "orphan_end"},
        "orphan_end": {"type": "transfer", "to_number": "+18005550199"},
    }
    root = parse(render_svg(make_flow(nodes)))
    groups = node_groups(root)
    lowest_reachable = max(box(shape(groups[n]))[3] for n in NODES)
    for node_id in ("orphan", "orphan_end"):
        group = groups[node_id]
        assert "unreachable" in classes(group)
        assert shape(group).get("stroke-dasharray")
        assert "unreachable" in texts(group)[1]
        assert "unreachable" in group.find(f"{SVG}title").text
        assert box(shape(group))[1] > lowest_reachable  # in the rows below
    assert not any("unreachable" in classes(groups[n]) for n in NODES)


def test_missing_targets_get_a_placeholder() -> None:
    nodes = {
        "menu": {"type": "menu", "greeting": "g", "options": {"1": "nowhere"}, "exit": "bye"},
        "bye": {"type": "goto", "target": "nowhere"},
    }
    root = parse(render_svg(make_flow(nodes), node_href=lambda n: f"?node={n}"))
    placeholder = node_groups(root)["nowhere"]
    assert {"missing", "node-missing"} <= classes(placeholder)
    assert texts(placeholder) == ["nowhere", "no such node"]
    assert shape(placeholder).get("stroke-dasharray")
    assert shape(placeholder).get("stroke") == "#c81e1e"
    arrows = [p for p in edges(root) if p.get("data-to") == "nowhere"]
    assert len(arrows) == 2 and all("edge-missing" in classes(p) for p in arrows)
    # Nothing to edit behind a placeholder: no link.
    links = {a.get("href") for a in root.iter(f"{SVG}a")}
    assert links == {"?node=menu", "?node=bye"}


def test_a_start_that_names_no_node_still_draws() -> None:
    root = parse(render_svg(make_flow(start="welcom")))
    groups = node_groups(root)
    assert "missing" in classes(groups["welcom"])
    assert all("unreachable" in classes(groups[n]) for n in NODES)
    start = next(p for p in edges(root) if "edge-start" in classes(p))
    assert start.get("data-to") == "welcom"


def test_problems_are_flagged() -> None:
    problems = {"goodbye": ["no prompt for es-ES", "second problem"], "unknown": ["ignored"]}
    root = parse(render_svg(make_flow(), problems=problems))
    groups = node_groups(root)
    flagged = groups["goodbye"]
    assert "has-problem" in classes(flagged)
    assert shape(flagged).get("stroke") == "#c81e1e"
    badge = next(g for g in flagged.iter(f"{SVG}g") if "problem-badge" in classes(g))
    assert texts(badge) == ["!"]
    title = flagged.find(f"{SVG}title").text
    assert "no prompt for es-ES" in title and "second problem" in title
    assert sum("has-problem" in classes(g) for g in groups.values()) == 1
    assert "goodbye" in root.find(f"{SVG}desc").text


def test_the_selected_node_is_drawn_selected() -> None:
    root = parse(render_svg(make_flow(), node_href=lambda n: f"?node={n}", selected="who"))
    groups = node_groups(root)
    assert [n for n, g in groups.items() if "selected" in classes(g)] == ["who"]
    ring = next(e for e in root.iter() if "selection-ring" in classes(e))
    assert box(ring)[0] < box(shape(groups["who"]))[0]
    current = [a for a in root.iter(f"{SVG}a") if a.get("aria-current")]
    assert [a.get("href") for a in current] == ["?node=who"]


# Accessibility, links


def test_the_root_is_a_named_group_with_a_title_and_description() -> None:
    flow = default_flow()
    root = parse(render_svg(flow))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "group"
    assert root.get("aria-label") == "Flow default"
    assert root.find(f"{SVG}title").text == "Flow default"
    desc = root.find(f"{SVG}desc").text
    assert f"{len(flow.nodes)} nodes" in desc and "welcome" in desc and "agent_unverified" in desc
    assert "flow-diagram" in classes(root)
    # Arrows and the key repeat what the nodes' descriptions say: hidden from screen readers.
    for group in root.iter(f"{SVG}g"):
        if classes(group) & {"edges", "edge-labels", "legend"}:
            assert group.get("aria-hidden") == "true"


def test_each_node_describes_where_it_goes() -> None:
    groups = node_groups(parse(render_svg(make_flow())))
    desc = groups["main_menu"].find(f"{SVG}desc").text
    assert "key 1 → who" in desc and "exit → goodbye" in desc
    assert "Ends this flow's part of the call" in groups["goodbye"].find(f"{SVG}desc").text


def test_node_links_when_href_given() -> None:
    flow = make_flow()
    root = parse(render_svg(flow, node_href=lambda n: f"/console/flows/sample?node={n}&x=1"))
    links = list(root.iter(f"{SVG}a"))
    assert len(links) == len(flow.nodes)
    for link in links:
        group = link.find(f"{SVG}g")
        node_id = group.get("data-node")
        kind = flow.nodes[node_id].type
        assert link.get("href") == f"/console/flows/sample?node={node_id}&x=1"
        assert "node-link" in classes(link)
        assert link.get("aria-label") == f"Edit node {node_id} ({kind})"
        described = link.get("aria-describedby")
        assert group.find(f"{SVG}desc").get("id") == described
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert len(ids) == len(set(ids))


def test_no_links_without_href() -> None:
    root = parse(render_svg(make_flow()))
    assert list(root.iter(f"{SVG}a")) == []
    assert not any("node-link" in classes(e) for e in root.iter())


# Markup


def test_no_inline_styles() -> None:
    for flow in (default_flow(), _tangled_flow()):
        svg = render_svg(
            flow,
            node_href=lambda n: f"?node={n}",
            problems={n: ["p"] for n in list(flow.nodes)[:3]},
            selected=next(iter(flow.nodes)),
        )
        root = parse(svg)
        assert not [e for e in root.iter() if "style" in e.attrib]
        assert root.find(f".//{SVG}style") is None
        assert not re.search(r"\sstyle=|<style", svg)
        # Presentation attributes colour it when no stylesheet does.
        for group in node_groups(root).values():
            assert shape(group).get("fill") and shape(group).get("stroke")


def test_text_is_escaped() -> None:
    nasty = """<script>alert("x")</script> & 'quotes' ]]> \x07bell"""
    nodes = {
        "menu": {
            "type": "menu",
            "greeting": "g",
            "options": {"1": "sip"},
            "exit": "sip",
            "description": nasty,
        },
        "sip": {"type": "agent", "dial": {"sip": "sip:a<b>&c'd\"@example.com"}},
    }
    flow = make_flow(nodes, description=nasty)
    svg = render_svg(
        flow,
        node_href=lambda n: f'?node={n}&a="<b>"',
        problems={"menu": [nasty]},
    )
    assert "<script>" not in svg
    root = parse(svg)
    groups = node_groups(root)
    clean = nasty.replace("\x07", "")
    assert clean.strip() in root.find(f"{SVG}desc").text
    assert clean.strip() in groups["menu"].find(f"{SVG}title").text
    assert "dial sip:a<b>&c'd\"@example.com" in groups["sip"].find(f"{SVG}desc").text
    hrefs = {a.get("href") for a in root.iter(f"{SVG}a")}
    assert '?node=menu&a="<b>"' in hrefs


def test_output_parses_as_inline_svg_in_html() -> None:
    svg = render_svg(default_flow())
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" ')
    assert svg.endswith("</svg>")
    assert "<?xml" not in svg  # a fragment for a page, not a document


def test_output_is_deterministic() -> None:
    flow = default_flow()
    first = render_svg(flow, problems={"goodbye": ["x"]}, selected="main_menu")
    again = parse_flow_file(DEFAULT_FLOW)[0]
    assert render_svg(again, problems={"goodbye": ["x"]}, selected="main_menu") == first
    # The same bytes in another process, whatever the hash seed (no set order leaks out).
    script = (
        "from pathlib import Path; from ivr.flows.loader import parse_flow_file; "
        "from ivr.flows.diagram import render_svg; import sys; "
        "sys.stdout.write(render_svg(parse_flow_file(Path(sys.argv[1]))[0]))"
    )
    plain = render_svg(flow)
    for seed in ("1", "2"):
        result = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", script, str(DEFAULT_FLOW)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.stdout == plain


# Helpers


def _tangled_flow() -> Flow:
    """Loops short and long, a self-loop, keys sharing a target, a missing target, an
    unreachable corner, descriptions: what a flow under edit looks like."""
    return make_flow(
        {
            "root": {
                "type": "menu",
                "greeting": "g",
                "description": "The main menu",
                "options": {
                    "1": "billing",
                    "2": "support",
                    "3": "billing",
                    "4": "gone",
                    "0": "root",
                },
                "exit": "bye",
            },
            "billing": {
                "type": "menu",
                "greeting": "g",
                "options": {"1": "amount", "9": "root"},
                "exit": "root",
            },
            "amount": {
                "type": "collect",
                "prompt": "p",
                "store_as": "amount",
                "next": "thanks",
                "on_failure": "billing",
            },
            "thanks": {"type": "say", "prompt": "p", "next": "again"},
            "again": {"type": "say", "prompt": "p", "next": "back"},
            "back": {"type": "goto", "target": "root"},
            "support": {"type": "identify", "found": "auth", "not_found": "desk"},
            "auth": {"type": "authenticate", "success": "desk", "failure": "support"},
            "desk": {"type": "agent", "queue": "q"},
            "bye": {"type": "hangup"},
            "orphan": {"type": "say", "prompt": "p", "next": "orphan_two"},
            "orphan_two": {"type": "goto", "target": "orphan"},
        },
        on_error="desk",
    )


def _big_flow(size: int) -> Flow:
    """A call center's worth: a main menu, submenus of submenus, collects that fall back,
    every branch ending at agents or a goodbye, and ways back to the main menu."""
    nodes: dict[str, dict] = {
        "main": {"type": "menu", "greeting": "g", "options": {}, "exit": "bye"},
        "bye": {"type": "hangup"},
        "desk": {"type": "agent", "queue": "q"},
    }
    queue = ["main"]
    count = 0
    while len(nodes) < size:
        parent = queue.pop(0)
        for key in "123456":
            if len(nodes) >= size:
                break
            count += 1
            child = f"n{count}"
            kind = count % 4
            if kind == 0:
                nodes[child] = {"type": "goto", "target": "main"}
            elif kind == 1:
                nodes[child] = {
                    "type": "collect",
                    "prompt": "p",
                    "store_as": "v",
                    "next": "desk",
                    "on_failure": parent,
                }
            else:
                nodes[child] = {
                    "type": "menu",
                    "greeting": "g",
                    "options": {"9": "main", "0": "desk"},
                    "exit": parent,
                }
                queue.append(child)
            nodes[parent]["options"][key] = child
    return make_flow(nodes)
