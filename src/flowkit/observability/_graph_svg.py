"""The flow graph drawn as an SVG picture, with no dependency.

Nodes are laid out in columns, left to right, by the longest path that leads
to them (a cycle is broken where a depth-first walk meets it), and ordered in
each column by where their neighbours stand, so that arrows cross less. Text
widths are estimated from the number of characters; the same graph always
gives the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._graph import FlowGraph

__all__ = ["graph_svg"]

_FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
_CHAR = 7.0  # the width of a character of 12px text, roughly
_SMALL_CHAR = 6.0  # of 10px text
_PAD_X = 14.0
_ONE_LINE = 30.0
_TWO_LINES = 42.0
_GAP_X = 90.0
_GAP_Y = 16.0
_MARGIN = 20.0
_LEGEND = 44.0
_SWEEPS = 4

_STYLES = {
    "event": ("#fff4e0", "#d98e1f"),
    "command": ("#e6efff", "#3f6fbf"),
    "handler": ("#e8f6ec", "#3a8f59"),
    "step": ("#f2ecfb", "#7752b8"),
}
_SLANT = 8.0  # how far a command's parallelogram leans


@dataclass(slots=True)
class _Node:
    id: str
    kind: str
    label: str
    caption: str  # the smaller line above the label: a service or an orchestrator
    order: int  # its place in FlowGraph._layout
    width: float = 0.0
    height: float = 0.0
    column: int = 0
    x: float = 0.0
    y: float = 0.0


def graph_svg(graph: FlowGraph) -> str:
    """The flow graph as a standalone SVG document.

    Events are orange rounded boxes, commands blue parallelograms, handlers
    green boxes under the name of their service, orchestrator steps purple
    boxes under the name of their orchestrator; a legend sits on top. A
    solid arrow is a message handled, emitted, sent or waited for, or one step
    leading to the next; a dashed red one a compensation. Each node is a ``<g
    class="node KIND" data-id="...">`` and each edge a ``<path class="edge">``.

    Args:
        graph: the graph to draw, from :func:`~flowkit.observability.flow_graph`.

    Returns:
        The SVG text, the same for the same graph.
    """
    nodes = _nodes(graph)
    edges = [
        (source, target, label, dashed)
        for source, target, label, dashed in graph._edges()
        if source in nodes and target in nodes
    ]
    columns = _columns(nodes, [(s, t) for s, t, _, _ in edges])
    _order(columns, nodes, [(s, t) for s, t, _, _ in edges])
    width, height = _place(columns)
    legend, legend_width = _legend()
    width = max(width, legend_width + _MARGIN)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow-graph" '
        f'width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'font-family="{escape(_FONT)}" font-size="12" role="img">',
        "<title>Flow graph</title>",
        "<defs>",
        _marker("arrow", "#555"),
        _marker("arrow-compensate", "#c0392b"),
        "</defs>",
    ]
    out.extend(legend)
    out.append('<g class="edges" fill="none">')
    for source, target, label, dashed in edges:
        out.extend(_edge(nodes[source], nodes[target], label, dashed))
    out.append("</g>")
    out.append('<g class="nodes">')
    for column in columns:
        for node in column:
            out.extend(_node(node))
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nodes(graph: FlowGraph) -> dict[str, _Node]:
    """The nodes of the graph, sized, in the order ``FlowGraph._layout`` gives."""
    nodes: dict[str, _Node] = {}
    captions: list[str] = []  # the boxes open around the current item
    for item in graph._layout():
        if item.kind == "open":
            captions.append(item.label)
        elif item.kind == "close":
            captions.pop()
        else:
            caption = ""
            if item.kind == "handler":
                caption = captions[-1]
            elif item.kind == "step":
                caption = next(c for c in captions if c != "parallel")
                caption = caption.partition(" (input ")[0]
                if len(captions) > 1 and captions[-1] == "parallel":
                    caption += " · parallel"
            node = _Node(item.id, item.kind, item.label, caption, len(nodes))
            text = max(len(item.label) * _CHAR, len(caption) * _SMALL_CHAR)
            node.width = text + 2 * _PAD_X + (2 * _SLANT if item.kind == "command" else 0)
            node.height = _TWO_LINES if caption else _ONE_LINE
            nodes[item.id] = node
    return nodes


def _columns(nodes: dict[str, _Node], edges: list[tuple[str, str]]) -> list[list[_Node]]:
    """Each node's column: the length of the longest path leading to it, once
    the edges closing a cycle are left out."""
    successors: dict[str, list[str]] = {key: [] for key in nodes}
    for source, target in edges:
        successors[source].append(target)
    # an iterative depth-first walk: its finishing order, reversed, is a
    # topological order of the edges that do not close a cycle
    state: dict[str, int] = {}  # 1: on the walk's path, 2: finished
    finished: list[str] = []
    forward: set[tuple[str, str]] = set()
    for root in nodes:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(successors[root]))]
        while stack:
            key, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[key] = 2
                finished.append(key)
                stack.pop()
            elif child not in state:
                forward.add((key, child))
                state[child] = 1
                stack.append((child, iter(successors[child])))
            elif state[child] == 2:
                forward.add((key, child))
    for key in reversed(finished):
        for child in successors[key]:
            if (key, child) in forward:
                nodes[child].column = max(nodes[child].column, nodes[key].column + 1)
    count = max((node.column for node in nodes.values()), default=-1) + 1
    columns: list[list[_Node]] = [[] for _ in range(count)]
    for node in nodes.values():
        columns[node.column].append(node)
    return columns


def _order(
    columns: list[list[_Node]], nodes: dict[str, _Node], edges: list[tuple[str, str]]
) -> None:
    """Order each column by the mean place of its nodes' neighbours in the
    column before (sweeping right) or after (sweeping left)."""
    before: dict[str, list[str]] = {key: [] for key in nodes}
    after: dict[str, list[str]] = {key: [] for key in nodes}
    for source, target in edges:
        if nodes[source].column < nodes[target].column:
            before[target].append(source)
            after[source].append(target)
    place = {node.id: index for column in columns for index, node in enumerate(column)}

    def sort(column: list[_Node], neighbours: dict[str, list[str]]) -> None:
        def key(node: _Node) -> tuple[float, int]:
            near = neighbours[node.id]
            mean = sum(place[n] for n in near) / len(near) if near else place[node.id]
            return (mean, node.order)

        column.sort(key=key)
        for index, node in enumerate(column):
            place[node.id] = index

    for sweep in range(_SWEEPS):
        if sweep % 2 == 0:
            for column in columns[1:]:
                sort(column, before)
        else:
            for column in reversed(columns[:-1]):
                sort(column, after)


def _place(columns: list[list[_Node]]) -> tuple[float, float]:
    """Give each node its position; the size of the whole picture."""
    heights = [sum(n.height for n in column) + _GAP_Y * (len(column) - 1) for column in columns]
    tallest = max(heights, default=0.0)
    x = _MARGIN
    for column, height in zip(columns, heights, strict=True):
        widest = max(n.width for n in column)
        y = _MARGIN + _LEGEND + (tallest - height) / 2
        for node in column:
            node.x = x + (widest - node.width) / 2
            node.y = y
            y += node.height + _GAP_Y
        x += widest + _GAP_X
    width = x - _GAP_X + _MARGIN if columns else 2 * _MARGIN
    return width, tallest + _LEGEND + 2 * _MARGIN


# -- drawing ------------------------------------------------------------------------


def _n(value: float) -> str:
    """A coordinate, rounded to a tenth, without a trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _marker(name: str, colour: str) -> str:
    return (
        f'<marker id="{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{colour}"/></marker>'
    )


def _shape(kind: str, x: float, y: float, width: float, height: float) -> str:
    fill, stroke = _STYLES[kind]
    paint = f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"'
    if kind == "command":
        points = (
            (x + _SLANT, y),
            (x + width, y),
            (x + width - _SLANT, y + height),
            (x, y + height),
        )
        return f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in points)}" {paint}/>'
    radius = height / 2 if kind == "event" else 6.0 if kind == "handler" else 0.0
    return (
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(width)}" height="{_n(height)}" '
        f'rx="{_n(radius)}" {paint}/>'
    )


def _node(node: _Node) -> list[str]:
    centre = node.x + node.width / 2
    lines = [
        f'<g class="node {node.kind}" data-id="{escape(node.id)}">',
        f"<title>{escape(node.kind)}: {escape(node.label)}</title>",
        _shape(node.kind, node.x, node.y, node.width, node.height),
    ]
    if node.caption:
        lines.append(
            f'<text class="caption" x="{_n(centre)}" y="{_n(node.y + 15)}" '
            f'text-anchor="middle" font-size="10" fill="#666">{escape(node.caption)}</text>'
        )
    baseline = node.y + node.height - 11
    lines.append(
        f'<text class="label" x="{_n(centre)}" y="{_n(baseline)}" text-anchor="middle" '
        f'fill="#222">{escape(node.label)}</text>'
    )
    lines.append("</g>")
    return lines


def _bezier(t: float, *points: tuple[float, float]) -> tuple[float, float]:
    """The point at ``t`` (0 to 1) on a cubic Bézier curve of four points."""
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = points
    u = 1 - t
    weights = (u**3, 3 * u * u * t, 3 * u * t * t, t**3)
    return (
        sum(w * x for w, x in zip(weights, (ax, bx, cx, dx), strict=True)),
        sum(w * y for w, y in zip(weights, (ay, by, cy, dy), strict=True)),
    )


def _edge(source: _Node, target: _Node, label: str, dashed: bool) -> list[str]:
    colour, marker = ("#c0392b", "arrow-compensate") if dashed else ("#555", "arrow")
    x1, y1 = source.x + source.width, source.y + source.height / 2
    if target.column > source.column:
        x2, y2 = target.x, target.y + target.height / 2
        bend = max((x2 - x1) / 2, 20.0)
        curve = ((x1, y1), (x1 + bend, y1), (x2 - bend, y2), (x2, y2))
        middle = _bezier(0.75, *curve)
    else:  # back to a column on the left (a cycle) or in the same one: loop below
        x1, y1 = source.x + source.width / 2, source.y + source.height
        x2, y2 = target.x + target.width / 2, target.y + target.height
        low = max(y1, y2) + 40
        curve = ((x1, y1), (x1, low), (x2, low), (x2, y2))
        middle = ((x1 + x2) / 2, low - 8)
    start, *controls = curve
    d = f"M{_n(start[0])},{_n(start[1])} C" + " ".join(f"{_n(x)},{_n(y)}" for x, y in controls)
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    lines = [
        f'<path class="edge" data-source="{escape(source.id)}" data-target="{escape(target.id)}" '
        f'd="{d}" stroke="{colour}" stroke-width="1.3"{dash} marker-end="url(#{marker})"/>'
    ]
    if label:
        lines.append(
            f'<text class="edge-label" x="{_n(middle[0])}" y="{_n(middle[1] - 4)}" '
            f'text-anchor="middle" font-size="10" fill="{colour}">{escape(label)}</text>'
        )
    return lines


_LEGEND_ITEMS = (
    ("event", "event"),
    ("command", "command"),
    ("handler", "handler"),
    ("step", "step"),
)


def _legend() -> tuple[list[str], float]:
    """The legend's elements, and where it ends on the right."""
    lines = ['<g class="legend" font-size="11">']
    x, y = _MARGIN, _MARGIN
    for kind, text in _LEGEND_ITEMS:
        lines.append(_shape(kind, x, y, 28, 16))
        lines.append(f'<text x="{_n(x + 34)}" y="{_n(y + 12)}" fill="#333">{text}</text>')
        x += 100
    for text, colour, marker, dash in (
        ("handled, emitted, sent", "#555", "arrow", ""),
        ("compensation", "#c0392b", "arrow-compensate", ' stroke-dasharray="5,4"'),
    ):
        lines.append(
            f'<path d="M{_n(x)},{_n(y + 8)} L{_n(x + 30)},{_n(y + 8)}" stroke="{colour}" '
            f'stroke-width="1.3" fill="none"{dash} marker-end="url(#{marker})"/>'
        )
        lines.append(f'<text x="{_n(x + 36)}" y="{_n(y + 12)}" fill="#333">{text}</text>')
        x += 36 + len(text) * _SMALL_CHAR + 30
    lines.append("</g>")
    return lines, x - 30
