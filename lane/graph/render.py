"""The lane graph drawn for people (SVG, laid out here) and for tools (Graphviz DOT).

No layout engine is needed: the columns are the call depth from the gateway (`lane.graph.model`), the rows
the nodes of a column by name. Each lane has its own color, so a gray request served by base shows
as an orange-dashed edge into a base-colored box -- the lane-specific part a service graph leaves out:
which lane served each hop, why it fell back, and where an app lost the lane (red). Every text is
XML-escaped (service and lane names come from a config, but the SVG may be served on a web page).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from lane.graph.model import Edge, Graph, Node

__all__ = ["edge_label", "edge_lines", "render_dot", "render_svg"]

NODE_W, NODE_H, COL_W, ROW_H, MARGIN, TOP = 170, 54, 430, 130, 30, 80
LANE_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d")
FALLBACK_COLOR, BREAK_COLOR, ERROR_COLOR = "#e69500", "#d62728", "#d62728"


def _lane(name: str) -> str:
    return name.rpartition("@")[2] if "@" in name else ""


def _lane_colors(graph: Graph) -> dict[str, str]:
    lanes = sorted({_lane(n.name) for n in graph.nodes if "@" in n.name and not n.refusal} |
                   {e.requested for e in graph.edges})
    # the conventional default lane first, so "base" keeps its color however many lanes there are
    lanes.sort(key=lambda lane: (lane != "base", lane))
    return {lane: LANE_COLORS[i % len(LANE_COLORS)] for i, lane in enumerate(lanes)}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def edge_lines(edge: Edge) -> tuple[str, str]:
    """``12.0/s, 0% errors, p99 3.1 ms`` and what happened to the lane (a fallback and why; else empty)."""
    parts = [f"{edge.rate:.1f}/s" if edge.rate is not None else f"{edge.requests:.0f} calls"]
    if edge.error_rate is not None:
        parts.append(f"{edge.error_rate:.0%} errors")
    if edge.p99_seconds is not None:
        parts.append(f"p99 {_ms(edge.p99_seconds)}")
    lane = ""
    if edge.fallback == "strict":
        lane = f"refused: lane {edge.requested} is strict"
    elif edge.target.endswith("@none"):
        lane = f"no lane may serve {edge.requested}"
    elif edge.fallback:
        lane = f"fallback {edge.requested}\u2192{_lane(edge.target)}: {edge.fallback}"
    elif edge.requested != _lane(edge.target):
        lane = f"requested {edge.requested}"
    return ", ".join(parts), lane


def edge_label(edge: Edge) -> str:
    """`edge_lines` on one line."""
    numbers, lane = edge_lines(edge)
    return f"{numbers}, {lane}" if lane else numbers


def _node_notes(node: Node) -> list[str]:
    notes = []
    if node.lost:
        notes.append(f"lane lost on {node.lost} calls")
    if node.recovered:
        notes.append("recovered from " + ", ".join(f"{via} ({n})" for via, n in sorted(node.recovered.items())))
    if node.refusal:
        notes.append("no lane may serve")
    return notes


def _positions(graph: Graph) -> dict[str, tuple[float, float]]:
    columns: dict[int, list[Node]] = {}
    for node in graph.nodes:
        columns.setdefault(node.depth, []).append(node)
    return {node.name: (MARGIN + depth * COL_W, TOP + row * ROW_H)
            for depth, nodes in columns.items() for row, node in enumerate(nodes)}


def render_svg(graph: Graph, title: str = "lane graph") -> str:
    colors = _lane_colors(graph)
    pos = _positions(graph)
    columns = max((n.depth for n in graph.nodes), default=0) + 1
    rows = max((sum(1 for n in graph.nodes if n.depth == d) for d in range(columns)), default=1)
    width = MARGIN * 2 + (columns - 1) * COL_W + NODE_W + 40
    height = TOP + (rows - 1) * ROW_H + NODE_H + 60
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">'),
           ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>'),
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{MARGIN}" y="28" font-size="16" font-weight="bold">{escape(title)}</text>',
           _legend(colors, MARGIN, 50)]
    if not graph.edges and not graph.nodes:
        out.append(f'<text x="{MARGIN}" y="{TOP + 20}" font-size="13">no calls seen yet: send some traffic</text>')
    seen_pairs: dict[tuple[str, str], int] = {}
    for edge in graph.edges:
        index = seen_pairs.get((edge.source, edge.target), 0)
        seen_pairs[(edge.source, edge.target)] = index + 1
        out.extend(_svg_edge(edge, pos, colors, index))
    for node in graph.nodes:
        out.extend(_svg_node(node, pos[node.name], colors))
    if graph.unreachable:
        out.append(f'<text x="{MARGIN}" y="{height - 10}" font-size="11" fill="{ERROR_COLOR}">not answering: '
                   f'{escape(", ".join(graph.unreachable))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend(colors: dict[str, str], x: float, y: float) -> str:
    items = [f'<rect x="{x + i * 120}" y="{y - 10}" width="12" height="12" fill="{color}"/>'
             f'<text x="{x + i * 120 + 16}" y="{y}" font-size="12">lane {escape(lane)}</text>'
             for i, (lane, color) in enumerate(colors.items())]
    at = x + len(colors) * 120
    items.append(f'<line x1="{at}" y1="{y - 4}" x2="{at + 30}" y2="{y - 4}" stroke="{FALLBACK_COLOR}" '
                 f'stroke-width="2" stroke-dasharray="6 3"/><text x="{at + 36}" y="{y}" font-size="12">fallback</text>')
    items.append(f'<rect x="{at + 110}" y="{y - 10}" width="12" height="12" fill="none" stroke="{BREAK_COLOR}" '
                 f'stroke-width="2"/><text x="{at + 126}" y="{y}" font-size="12">lane lost / refused</text>')
    return "".join(items)


def _svg_node(node: Node, at: tuple[float, float], colors: dict[str, str]) -> list[str]:
    x, y = at
    lane = _lane(node.name)
    fill = "#eeeeee" if node.name == "gateway" or node.refusal else colors.get(lane, "#999999")
    broken = node.lost > 0 or node.refusal
    stroke = f'stroke="{BREAK_COLOR}" stroke-width="3"' if broken else 'stroke="#333" stroke-width="1"'
    dash = ' stroke-dasharray="6 3"' if node.refusal else ""
    text_color = "#222" if fill == "#eeeeee" else "white"
    out = [f'<g class="node" data-name={quoteattr(node.name)}>',
           f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" {stroke}{dash}/>',
           (f'<text x="{x + NODE_W / 2}" y="{y + NODE_H / 2 + 5}" font-size="15" font-weight="bold" text-anchor="middle" '
           f'fill="{text_color}">{escape(node.name)}</text>')]
    for i, note in enumerate(_node_notes(node)):
        color = BREAK_COLOR if node.lost or node.refusal else "#7a4d00"
        out.append(f'<text x="{x + NODE_W / 2}" y="{y + NODE_H + 14 + 13 * i}" font-size="11" text-anchor="middle" '
                   f'fill="{color}">{escape(note)}</text>')
    out.append("</g>")
    return out


def _svg_edge(edge: Edge, pos: dict[str, tuple[float, float]], colors: dict[str, str], index: int) -> list[str]:
    (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
    x1, y1 = sx + NODE_W, sy + NODE_H / 2 + index * 8
    x2, y2 = tx, ty + NODE_H / 2 + index * 8
    if tx <= sx:  # a call back to an earlier column: leave and enter from below
        x1, y1, x2, y2 = sx + NODE_W / 2, sy + NODE_H, tx + NODE_W / 2, ty + NODE_H
    bend = max(60.0, abs(x2 - x1) / 2)
    path = f"M {x1:.1f} {y1:.1f} C {x1 + bend:.1f} {y1:.1f}, {x2 - bend:.1f} {y2:.1f}, {x2:.1f} {y2:.1f}"
    refused = edge.fallback == "strict" or edge.target.endswith("@none")
    if refused:
        style = f'stroke="{BREAK_COLOR}" stroke-width="2" stroke-dasharray="6 3"'
    elif edge.fallback:
        style = f'stroke="{FALLBACK_COLOR}" stroke-width="2.5" stroke-dasharray="6 3"'
    else:
        style = f'stroke="{colors.get(edge.requested, "#555")}" stroke-width="2"'
    label_color = ERROR_COLOR if refused or (edge.error_rate or 0) > 0 else "#333"
    # the label is centered on the curve a third of the way (t = 0.35): edges that cross mid-way keep apart
    t, u = 0.35, 0.65
    mx = u**3 * x1 + 3 * u * u * t * (x1 + bend) + 3 * u * t * t * (x2 - bend) + t**3 * x2
    my = u**3 * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y2 - 4
    numbers, lane = edge_lines(edge)
    lane_color = ERROR_COLOR if refused else FALLBACK_COLOR if edge.fallback else "#555"
    lane_text = (f'<text x="{mx:.1f}" y="{my - 13:.1f}" font-size="10.5" text-anchor="middle" fill="{lane_color}" '
                 f'stroke="white" '
                 f'stroke-width="3" paint-order="stroke">{escape(lane)}</text>') if lane else ""
    return [(f'<g class="edge" data-source={quoteattr(edge.source)} data-target={quoteattr(edge.target)} '
            f'data-fallback={quoteattr(edge.fallback)}>'),
            f'<title>{escape(f"{edge.source} -> {edge.target} (lane {edge.requested})")}</title>',
            f'<path d="{path}" fill="none" {style} marker-end="url(#arrow)"/>',
            (f'<text x="{mx:.1f}" y="{my:.1f}" font-size="10.5" text-anchor="middle" fill="{label_color}" '
             f'stroke="white" stroke-width="3" paint-order="stroke">{escape(numbers)}</text>'),
            lane_text,
            "</g>"]


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(graph: Graph) -> str:
    colors = _lane_colors(graph)
    lines = ["digraph lanes {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="sans-serif"];']
    for node in graph.nodes:
        fill = "#eeeeee" if node.name == "gateway" or node.refusal else colors.get(_lane(node.name), "#999999")
        label = "\\n".join([node.name, *_node_notes(node)])
        extra = f', color="{BREAK_COLOR}", penwidth=3' if node.lost or node.refusal else ""
        lines.append(f'  {_dot_id(node.name)} [label={_dot_id(label)}, fillcolor="{fill}"{extra}];')
    for edge in graph.edges:
        if edge.fallback == "strict" or edge.target.endswith("@none"):
            style = f'color="{BREAK_COLOR}", style=dashed'
        elif edge.fallback:
            style = f'color="{FALLBACK_COLOR}", style=dashed, penwidth=2'
        else:
            style = f'color="{colors.get(edge.requested, "#555555")}"'
        lines.append(f"  {_dot_id(edge.source)} -> {_dot_id(edge.target)} [label={_dot_id(edge_label(edge))}, {style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
