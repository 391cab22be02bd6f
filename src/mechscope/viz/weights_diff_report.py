"""A self-contained HTML report of a base-vs-fine-tuned weight diff: inline SVG, no network, all text escaped.

The page shows the relative change per layer (bars: pooled over the layer's tensors; dots: the largest
single tensor's), a layers x block types heatmap of the pooled relative change, the most-changed tensors,
and the per-block summaries. Tensor names and checkpoint paths are user data and go through ``html.escape`` everywhere.
"""

from __future__ import annotations

import math
from html import escape

from mechscope.weights.diff_results import ParamDiff, WeightDiff

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1.5em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.name { font-family: ui-monospace, monospace; }
.legend { font-size: 12px; color: #555; }
svg text { font-size: 11px; }
"""
_BAR, _DOT = "#4e79a7", "#e15759"


def _num(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.4g}"


def _scale_max(values: list[float]) -> float:
    """The top of a linear axis: the largest finite value (infinite values are drawn at the top)."""
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0) or 1.0


def _layer_chart(result: WeightDiff, width: int = 640, height: int = 240) -> str:
    layers = result.layers
    if not layers:
        return '<p class="legend">No tensor belongs to a numbered layer.</p>'
    values = [v for s in layers for v in (s.pooled_relative_change, s.max_relative_change)]
    margin, top = 44, _scale_max(values)
    step = (width - 2 * margin) / len(layers)

    def y(value: float) -> float:
        return height - margin - (height - 2 * margin) * min(value, top) / top

    parts = [
        f'<svg class="layers" width="{width}" height="{height}" role="img" aria-label="relative change per layer">',
        f'<line x1="{margin}" y1="{y(0)}" x2="{width - margin}" y2="{y(0)}" stroke="#999"/>',
        f'<line x1="{margin}" y1="{y(0)}" x2="{margin}" y2="{y(top)}" stroke="#999"/>',
        f'<text x="2" y="{y(top) + 4}">{_num(top)}</text><text x="2" y="{y(0) + 4}">0</text>',
    ]
    for i, summary in enumerate(layers):
        x = margin + step * i
        pooled, peak = summary.pooled_relative_change, summary.max_relative_change
        tip = escape(
            f"layer {summary.layer_index}: pooled {_num(pooled)}, mean {_num(summary.mean_relative_change)}, "
            f"max {_num(peak)} ({summary.most_changed})",
            quote=True,
        )
        parts.append(
            f'<rect class="bar" data-layer="{summary.layer_index}" data-pooled="{pooled}" x="{x + step * 0.15:.1f}" '
            f'y="{y(pooled):.1f}" width="{step * 0.7:.1f}" height="{y(0) - y(pooled):.1f}" fill="{_BAR}">'
            f"<title>{tip}</title></rect>"
            f'<circle class="max" cx="{x + step / 2:.1f}" cy="{y(peak):.1f}" r="3" fill="{_DOT}">'
            f"<title>{tip}</title></circle>"
        )
        if math.isinf(peak):  # drawn at the top of the axis; say that it is off the scale
            parts.append(f'<text x="{x + step / 2 + 5:.1f}" y="{y(peak) + 4:.1f}" fill="{_DOT}">∞</text>')
        if len(layers) <= 40 or i % max(1, len(layers) // 20) == 0:
            parts.append(f'<text x="{x + step / 2 - 6:.1f}" y="{height - margin + 16}">{summary.layer_index}</text>')
    parts.append(f'<text x="{width / 2 - 20:.0f}" y="{height - 6}">layer</text></svg>')
    return "".join(parts)


def _heatmap(result: WeightDiff) -> str:
    cells = result.layer_block_changes()
    if not cells:
        return ""
    blocks = sorted({block for _, block in cells})
    top = _scale_max(list(cells.values()))
    head = "".join(f"<th>{escape(block)}</th>" for block in blocks)
    rows = []
    for summary in result.layers:
        layer, tds = summary.layer_index, []
        for block in blocks:
            value = cells.get((layer, block))
            if value is None:
                tds.append('<td class="num" style="background:#f4f4f4"></td>')
                continue
            level = min(value, top) / top
            colour = f"rgb(255,{int(255 - 170 * level)},{int(255 - 200 * level)})"
            tds.append(
                f'<td class="num" data-layer="{layer}" data-block="{escape(block, quote=True)}" '
                f'style="background:{colour}" title="layer {layer}, {escape(block, quote=True)}: {_num(value)}">'
                f"{_num(value)}</td>"
            )
        rows.append(f"<tr><th>{layer}</th>{''.join(tds)}</tr>")
    return f'<table class="heatmap"><tr><th>layer</th>{head}</tr>{"".join(rows)}</table>'


def _param_rows(params: list[ParamDiff]) -> str:
    rows = []
    for position, p in enumerate(params, start=1):
        layer = "" if p.layer_index is None else str(p.layer_index)
        singular = ", ".join(_num(s) for s in p.top_singular_values)
        rows.append(
            f'<tr class="param" data-name="{escape(p.param_name, quote=True)}"><td class="num">{position}</td>'
            f'<td class="name">{escape(p.param_name)}</td><td class="num">{layer}</td>'
            f"<td>{escape(p.block_type)}</td><td>{escape(str(tuple(p.shape)))}</td>"
            f'<td class="num">{_num(p.relative_change)}</td><td class="num">{p.cosine:.6f}</td>'
            f'<td class="num">{_num(p.diff_norm)}</td><td class="num">{p.rank}</td>'
            f'<td class="num">{p.effective_rank:.3g}</td><td class="num">{singular}</td></tr>'
        )
    return (
        "<table><tr><th>#</th><th>tensor</th><th>layer</th><th>block</th><th>shape</th><th>relative change</th>"
        "<th>cosine</th><th>‖B−A‖</th><th>rank</th><th>eff. rank</th><th>top singular values of B−A</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _block_rows(result: WeightDiff) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.block_type)}</td><td class='num'>{s.n_tensors}</td>"
        f"<td class='num'>{_num(s.mean_relative_change)}</td><td class='num'>{_num(s.max_relative_change)}</td>"
        f"<td class='num'>{_num(s.pooled_relative_change)}</td><td class='name'>{escape(s.most_changed)}</td></tr>"
        for s in sorted(result.blocks, key=lambda s: (-s.pooled_relative_change, -s.mean_relative_change))
    )
    return (
        "<table><tr><th>block</th><th>tensors</th><th>mean</th><th>max</th><th>pooled</th>"
        f"<th>most changed</th></tr>{rows}</table>"
    )


def render_weights_diff_html(result: WeightDiff, *, top: int = 20) -> str:
    """The diff as one HTML document (a string) showing the ``top`` most-changed tensors; opens offline."""
    tolerance = "numpy's default" if result.rank_rtol is None else f"rtol = {result.rank_rtol:g}"
    changed = sum(p.diff_norm > 0.0 for p in result.params)
    verdict = "The checkpoints are identical." if result.identical else f"{changed} of {len(result.params)} changed."
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>mechscope weight diff</title>'
        f"<style>{_STYLE}</style></head><body><h1>mechscope weight diff</h1>"
        f'<p>Base (A): <span class="name" id="base">{escape(result.base)}</span><br>'
        f'Fine-tuned (B): <span class="name" id="finetuned">{escape(result.finetuned)}</span><br>'
        f"{len(result.params)} tensors compared at {escape(result.created_at)}. {verdict}</p>"
        '<p class="legend">Relative change is ‖B−A‖<sub>F</sub> / ‖A‖<sub>F</sub>; rank tolerance: '
        f"{escape(tolerance)}.</p>"
        "<h2>Relative change per layer</h2>"
        f'<p class="legend"><span style="color:{_BAR}">■</span> pooled over the layer\'s tensors '
        "(‖B−A‖ / ‖A‖ of all of them as one vector), "
        f'<span style="color:{_DOT}">●</span> the largest single tensor\'s.</p>{_layer_chart(result)}'
        "<h2>Pooled relative change by layer and block</h2>"
        f"{_heatmap(result)}"
        f"<h2>The {min(top, len(result.params))} most-changed tensors</h2>"
        f"{_param_rows(result.ranked_params(top))}"
        f"<h2>By block type</h2>{_block_rows(result)}"
        "</body></html>\n"
    )
