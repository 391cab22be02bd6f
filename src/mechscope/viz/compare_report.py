"""A self-contained HTML page for `mechscope compare`: both models' top token per aligned layer."""

from __future__ import annotations

from html import escape

from mechscope.lens.results import Comparison
from mechscope.viz.lens_report import visible


def render_compare_html(result: Comparison) -> str:
    """The comparison as one HTML document; diverging layers are highlighted, every token escaped."""
    rows = []
    for row in result.layers:
        kl = "" if row.kl_a_to_b is None else f"{row.kl_a_to_b:.3f}"
        style = "" if row.same_top else ' style="background:#fde2e2"'
        rows.append(
            f'<tr class="layer" data-layer="{row.layer_a}" data-same="{str(row.same_top).lower()}"{style}>'
            f"<td>{row.layer_a}</td><td class='tok'>{visible(row.top_a.token)}</td><td>{row.top_a.prob:.3f}</td>"
            f"<td>{row.layer_b}</td><td class='tok'>{visible(row.top_b.token)}</td><td>{row.top_b.prob:.3f}</td>"
            f"<td>{kl}</td></tr>"
        )
    if result.token_level:
        where = "nowhere" if result.first_divergence is None else f"first at layer {result.first_divergence}"
        verdict = f"The top tokens diverge {where}."
    else:
        verdict = f"Not compared token by token: {escape(result.reason or '')}."
    a, b = escape(result.model_a), escape(result.model_b)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>mechscope compare</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}td,th{border:1px solid #ddd;padding:3px 8px}"
        "table{border-collapse:collapse}.tok{font-family:ui-monospace,monospace;white-space:pre}</style>"
        f"</head><body><h1>mechscope compare</h1><p>Model 1: {a}<br>Model 2: {b}</p>"
        f'<p>Prompt: <span class="tok">{escape(result.prompt)}</span></p>'
        f"<p>Predictions: <b class='tok'>{visible(result.predicted_a)}</b> vs "
        f"<b class='tok'>{visible(result.predicted_b)}</b>. {verdict}</p>"
        "<table><tr><th>layer 1</th><th>top-1</th><th>p</th><th>layer 2</th><th>top-1</th><th>p</th>"
        f"<th>KL(1||2)</th></tr>{''.join(rows)}</table></body></html>\n"
    )
