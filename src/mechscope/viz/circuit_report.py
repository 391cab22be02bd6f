"""A self-contained HTML view of a circuit graph on the shared page shell: one layered SVG, no script.

Every node carries its effect as text (``+0.350``) and every edge its weight, not only in a tooltip; edges
end in arrowheads. Node fills and edge strokes share one diverging scale, the effect (blue negative, white 0,
red positive), symmetric around 0 up to the largest absolute effect or weight in the graph; a legend states it.
An empty circuit (only the input and the output) is drawn as the two ends and the words "no component passes
the threshold", never as an input→output edge. Labels are user data and go through ``html.escape``.
"""

from __future__ import annotations

from html import escape

from mechscope.causal.results import CircuitGraph, Node
from mechscope.viz.charts import SVG_NS, download_json, figure, legend, table
from mechscope.viz.colors import Scale, ink
from mechscope.viz.page import render_page

ENDS = ("input", "output")
EMPTY = "no component passes the threshold"
_WIDTH_STEP, _HEIGHT_STEP, _BOX_W, _BOX_H = 190, 64, 160, 40


def effect_text(value: float) -> str:
    """An effect or weight as shown on the graph: signed, three decimals.

    >>> effect_text(0.35), effect_text(-0.02)
    ('+0.350', '-0.020')
    """
    return f"{value:+.3f}"


def effect_scale(graph: CircuitGraph) -> Scale:
    """The graph's one diverging scale: up to the largest absolute node effect or edge weight."""
    values = [abs(n.effect) for n in graph.nodes if n.id not in ENDS] + [abs(e.weight) for e in graph.edges]
    return Scale.signed("effect (change of the metric)", max(values, default=1.0))


def _columns(graph: CircuitGraph) -> list[list[Node]]:
    inner = [n for n in graph.nodes if n.id not in ENDS]
    layers = sorted({n.layer or 0 for n in inner})
    by_node = {n.id: n for n in graph.nodes}
    source = by_node.get("input", Node(id="input", label="input"))
    sink = by_node.get("output", Node(id="output", label="output"))
    return [[source], *[[n for n in inner if (n.layer or 0) == layer] for layer in layers], [sink]]


def circuit_svg(graph: CircuitGraph, scale: Scale) -> str:
    """The graph as a standalone SVG document: layered columns, input on the left, output on the right."""
    columns = _columns(graph)
    empty = len(columns) == 2
    step = _WIDTH_STEP * (2 if empty else 1)
    tallest = max(len(c) for c in columns)
    width, height = step * (len(columns) - 1) + _BOX_W + 40, _HEIGHT_STEP * tallest + 40
    where: dict[str, tuple[float, float]] = {}
    for i, column in enumerate(columns):
        for j, node in enumerate(column):
            top = 20 + (tallest - len(column)) * _HEIGHT_STEP / 2 + j * _HEIGHT_STEP
            where[node.id] = (20 + i * step, top)
    parts = [
        f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" font-family="ui-monospace, monospace" '
        f'font-size="11" role="img" aria-label="circuit graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    for edge in graph.edges:
        if edge.source not in where or edge.target not in where:
            continue
        (x1, y1), (x2, y2) = where[edge.source], where[edge.target]
        x1, y1, y2 = x1 + _BOX_W, y1 + _BOX_H / 2, y2 + _BOX_H / 2
        colour = scale.colour(edge.weight)
        thickness = 1 + 4 * min(1.0, abs(edge.weight) / scale.high)
        text = effect_text(edge.weight)
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        parts.append(
            f'<g class="edge" data-source="{escape(edge.source, quote=True)}" '
            f'data-target="{escape(edge.target, quote=True)}" data-weight="{edge.weight:.6g}">'
            f"<title>{escape(edge.source)} → {escape(edge.target)}: {text}</title>"
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555" '
            f'stroke-width="{thickness + 2:.1f}" stroke-opacity="0.35"/>'
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-width="{thickness:.1f}" marker-end="url(#arrow)"/>'
            f'<text class="weight" x="{mx:.1f}" y="{my - 4:.1f}" text-anchor="middle" fill="#333" '
            f'stroke="#fff" stroke-width="3" paint-order="stroke">{text}</text></g>'
        )
    if empty:
        (x1, y1), (x2, _) = where["input"], where["output"]
        parts.append(
            f'<text class="empty" x="{(x1 + _BOX_W + x2) / 2:.1f}" y="{y1 + _BOX_H / 2 + 4:.1f}" '
            f'text-anchor="middle" font-family="sans-serif" fill="#555">{EMPTY}</text>'
        )
    for column in columns:
        for node in column:
            x, y = where[node.id]
            label = escape(node.label)
            end = node.id in ENDS
            fill = "#eee" if end else scale.colour(node.effect)
            effect = "" if end else effect_text(node.effect)
            where_text = "" if node.layer is None else f"layer {node.layer}"
            if node.position is not None:
                where_text += f", position {node.position}"
            title = f"{label}: effect {effect}" + (f" ({where_text})" if where_text else "") if effect else label
            parts.append(
                f'<g class="node" data-id="{escape(node.id, quote=True)}" data-effect="{node.effect:.6g}">'
                f"<title>{title}</title>"
                f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" fill="{fill}" stroke="#446"/>'
                f'<text x="{x + 8}" y="{y + (16 if effect else 24)}" fill="{ink(fill) if not end else "#222"}">'
                f"{escape(node.label if len(node.label) <= 22 else node.label[:21] + '…')}</text>"
            )
            if effect:
                parts.append(f'<text class="effect" x="{x + 8}" y="{y + 32}" fill="{ink(fill)}">{effect}</text>')
            parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def render_circuit_html(graph: CircuitGraph) -> str:
    """The graph as one HTML document: the drawing, its legend, a node table and offline downloads."""
    scale = effect_scale(graph)
    svg = circuit_svg(graph, scale)
    inner = [n for n in graph.nodes if n.id not in ENDS]
    explain = (
        '<p class="legend">Each box is a component with its effect on the metric written in it; each arrow is '
        "an edge with its weight written on it. Fills and arrows share the diverging scale below "
        "(negative blue, positive red).</p>"
    )
    if not inner:
        explain = f'<p class="legend empty">The circuit is empty: {EMPTY}.</p>'
    drawing = f"{legend(scale)}{explain}" + figure(svg, filename="circuit.svg", caption="The circuit.")
    rows: list[list[str | float | int]] = [
        [n.label, "" if n.layer is None else n.layer, "" if n.position is None else n.position, effect_text(n.effect)]
        for n in sorted(inner, key=lambda n: -abs(n.effect))
    ]
    sections = [("Circuit", drawing)]
    if rows:
        sections.append(("Components by effect size", table(["component", "layer", "position", "effect"], rows)))
    edge_rows: list[list[str | float | int]] = [[e.source, e.target, effect_text(e.weight)] for e in graph.edges]
    if edge_rows:
        sections.append(("Edges", table(["from", "to", "weight"], edge_rows, css="edges")))
    return render_page(
        f"mechscope circuit: {graph.title}",
        model="",
        shows=f"The components whose {graph.origin} effect passes the threshold, layer by layer.",
        downloads=download_json(graph.model_dump_json(), "circuit.json", "result JSON"),
        sections=sections,
    )
