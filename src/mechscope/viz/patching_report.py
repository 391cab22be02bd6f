"""A self-contained HTML heatmap of activation-patching effects (layers x positions), tokens escaped."""

from __future__ import annotations

from html import escape

from mechscope.causal.results import PatchingResult
from mechscope.viz.lens_report import visible


def _colour(effect: float) -> str:
    # Blue for restoring (towards 1), red for the opposite direction; white at 0.
    level = max(-1.0, min(1.0, effect))
    if level >= 0:
        return f"rgb({int(255 - 200 * level)},{int(255 - 130 * level)},255)"
    return f"rgb(255,{int(255 + 150 * level)},{int(255 + 150 * level)})"


def render_patching_html(result: PatchingResult, *, model: str = "") -> str:
    """The patching result as one HTML document."""
    head = "".join(f'<th class="tok">{visible(t)}</th>' for t in result.tokens)
    rows = "".join(
        f"<tr><th>L{layer}</th>"
        + "".join(
            f'<td data-layer="{layer}" data-position="{p}" data-effect="{e:.4f}" style="background:{_colour(e)}" '
            f'title="{escape(result.site)}.{layer} at {escape(result.tokens[p], quote=True)}: {e:.3f}">{e:.2f}</td>'
            for p, e in enumerate(row)
        )
        + "</tr>"
        for layer, row in zip(result.layers, result.effects, strict=True)
    )
    title = f"mechscope patching ({result.site}){': ' + model if model else ''}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}td,th{border:1px solid #ddd;padding:3px 6px;"
        "text-align:center}table{border-collapse:collapse}.tok{font-family:ui-monospace,monospace;"
        "white-space:pre}</style></head>"
        f"<body><h1>{escape(title)}</h1>"
        f'<p>Clean: <span class="tok">{escape(result.clean_prompt)}</span> (metric {result.clean_metric:.3f})<br>'
        f'Corrupted: <span class="tok">{escape(result.corrupted_prompt)}</span> '
        f"(metric {result.corrupted_metric:.3f})</p>"
        "<p>Each cell: the corrupted run with that layer and position patched from the clean run; "
        "0 = corrupted, 1 = clean.</p>"
        f"<table><tr><th>layer</th>{head}</tr>{rows}</table></body></html>\n"
    )
