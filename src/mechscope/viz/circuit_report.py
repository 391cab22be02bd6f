"""A self-contained HTML view of a circuit graph: layered inline SVG, labels escaped, no scripts."""

from __future__ import annotations

from html import escape

from mechscope.causal.results import CircuitGraph, Node


def _columns(graph: CircuitGraph) -> list[list[Node]]:
    inner = [n for n in graph.nodes if n.id not in ("input", "output")]
    layers = sorted({n.layer or 0 for n in inner})
    by_node = {n.id: n for n in graph.nodes}
    return [
        [by_node["input"]],
        *[[n for n in inner if (n.layer or 0) == layer] for layer in layers],
        [by_node["output"]],
    ]


def render_circuit_html(graph: CircuitGraph) -> str:
    """The graph as one HTML document with an SVG drawing (node boxes shaded by effect size)."""
    columns = _columns(graph)
    width_step, height_step, box_w, box_h = 190, 60, 160, 36
    tallest = max(len(c) for c in columns)
    width, height = width_step * len(columns) + 40, height_step * tallest + 40
    where: dict[str, tuple[float, float]] = {}
    for i, column in enumerate(columns):
        for j, node in enumerate(column):
            top = 20 + (tallest - len(column)) * height_step / 2 + j * height_step
            where[node.id] = (20 + i * width_step, top)
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="circuit graph">']
    for edge in graph.edges:
        (x1, y1), (x2, y2) = where[edge.source], where[edge.target]
        parts.append(
            f'<line class="edge" data-source="{escape(edge.source, quote=True)}" '
            f'data-target="{escape(edge.target, quote=True)}" x1="{x1 + box_w}" y1="{y1 + box_h / 2}" '
            f'x2="{x2}" y2="{y2 + box_h / 2}" stroke="#888" stroke-width="{1 + 4 * min(1.0, edge.weight):.1f}"/>'
        )
    for node in graph.nodes:
        x, y = where[node.id]
        level = min(1.0, abs(node.effect))
        fill = f"rgb({int(255 - 180 * level)},{int(255 - 110 * level)},255)"
        label = escape(node.label)
        detail = "" if node.id in ("input", "output") else f" ({node.effect:+.3f})"
        parts.append(
            f'<g class="node" data-id="{escape(node.id, quote=True)}"><title>{label}{detail}</title>'
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="#446"/>'
            f'<text x="{x + 8}" y="{y + 22}" font-size="11" font-family="ui-monospace, monospace">{label}</text></g>'
        )
    parts.append("</svg>")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(graph.title)}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}</style></head>"
        f"<body><h1>Circuit ({escape(graph.origin)})</h1><p>{escape(graph.title)}</p>{''.join(parts)}</body></html>\n"
    )
