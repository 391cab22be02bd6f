"""A self-contained HTML report of a base-vs-fine-tuned weight diff on the shared page shell: no script.

The page shows the relative change per layer (a line chart of the pooled change over the layer's tensors and
of its largest single tensor's), a layers x block types heatmap of the pooled relative change on one
sequential scale (white 0 .. dark blue at the largest finite value; a legend states it), the most-changed
tensors (only tensors that changed) and the per-block summaries. A tensor that was zero in the base and
changed has an infinite relative change: it is shown as "∞" and kept out of the colour scale and the chart's
axis. The figures can be downloaded as SVG or PNG and the result as JSON. Tensor names and checkpoint paths are user
data and go through ``html.escape`` everywhere.
"""

from __future__ import annotations

import math
from html import escape

from mechscope.viz.charts import (
    Series,
    download_json,
    figure,
    heatmap,
    legend,
    line_chart,
    num,
)
from mechscope.viz.colors import Scale
from mechscope.viz.page import render_page
from mechscope.weights.diff_results import ParamDiff, WeightDiff


def _num(value: float) -> str:
    """A relative change as shown: four significant digits, "∞" when infinite.

    >>> _num(math.inf), _num(0.012345)
    ('∞', '0.01235')
    """
    return "∞" if math.isinf(value) else f"{value:.4g}"


def _scale_max(values: list[float]) -> float:
    """The top of a scale or axis: the largest finite value (infinite values are kept out of it)."""
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0) or 1.0


def change_scale(result: WeightDiff) -> Scale:
    """The heatmap's one sequential scale: 0 .. the largest finite pooled change of a (layer, block) cell."""
    return Scale("pooled relative change ‖B−A‖/‖A‖", 0.0, _scale_max(list(result.layer_block_changes().values())))


def _layer_chart(result: WeightDiff) -> str:
    layers = result.layers
    if not layers:
        return '<p class="legend">No tensor belongs to a numbered layer.</p>'
    values = [v for s in layers for v in (s.pooled_relative_change, s.max_relative_change)]
    high = _scale_max(values)
    series = []
    for name, attr in (("pooled", "pooled_relative_change"), ("largest tensor", "max_relative_change")):
        points = [(s.layer_index, getattr(s, attr)) for s in layers if math.isfinite(getattr(s, attr))]
        series.append(Series(name, [float(x) for x, _ in points], [float(y) for _, y in points], data={"kind": attr}))
    svg = line_chart(
        series,
        x_title="layer",
        y_title="relative change ‖B−A‖/‖A‖",
        y_low=0.0,
        y_high=high,
        label="relative change per layer",
    )
    off = [s.layer_index for s in layers if math.isinf(s.max_relative_change) or math.isinf(s.pooled_relative_change)]
    note = (
        f" Layers {', '.join(map(str, off))} have a tensor that was zero in the base (relative change ∞); "
        "it is not plotted."
        if off
        else ""
    )
    return (
        '<p class="legend">"pooled": ‖B−A‖ / ‖A‖ of all the layer\'s tensors as one vector; "largest tensor": '
        f"the largest single tensor's relative change. The axis runs 0 .. {num(high)}.{note}</p>"
        + figure(svg, filename="weights-diff-layers.svg", caption="Relative change per layer.")
    )


def _heatmap(result: WeightDiff, scale: Scale) -> str:
    cells = result.layer_block_changes()
    if not cells:
        return '<p class="legend">No tensor belongs to a numbered layer.</p>'
    blocks = sorted({block for _, block in cells})
    layer_ids = [s.layer_index for s in result.layers]
    grid = [[cells.get((layer, block), math.nan) for block in blocks] for layer in layer_ids]
    svg = heatmap(
        [[v if math.isfinite(v) else math.nan for v in row] for row in grid],
        rows=[str(layer) for layer in layer_ids],
        columns=blocks,
        scale=scale,
        x_title="block type",
        y_title="layer",
        tip=lambda r, c, _: (
            f"layer {layer_ids[r]}, {blocks[c]}: " + ("no tensor" if math.isnan(grid[r][c]) else _num(grid[r][c]))
        ),
        cell_attrs=lambda r, c, v: (
            {"class": "change", "data-layer": str(layer_ids[r]), "data-block": blocks[c]}
            | ({"data-value": _num(v)} if not math.isnan(v) else {})
        ),
        text=lambda r, c, _: "" if math.isnan(grid[r][c]) else ("∞" if math.isinf(grid[r][c]) else f"{grid[r][c]:.2g}"),
        cell=20,
        cell_width=46,
        label="pooled relative change by layer and block",
    )
    return (
        f"{legend(scale)}"
        '<p class="legend">Each cell is the pooled relative change of that layer\'s tensors of that block type. '
        f'Grey cells: no such tensor, or "∞" (a tensor that was zero in the base), kept off the scale.</p>'
        + figure(svg, filename="weights-diff-heatmap.svg", caption="Pooled relative change by layer and block type.")
    )


def _param_rows(params: list[ParamDiff]) -> str:
    if not params:
        return '<p class="legend" id="no-change">No tensor changed.</p>'
    rows = []
    for position, p in enumerate(params, start=1):
        layer = "" if p.layer_index is None else str(p.layer_index)
        singular = ", ".join(_num(s) for s in p.top_singular_values)
        rows.append(
            f'<tr class="param" data-name="{escape(p.param_name, quote=True)}"><td class="num">{position}</td>'
            f'<td class="name tok">{escape(p.param_name)}</td><td class="num">{layer}</td>'
            f"<td>{escape(p.block_type)}</td><td>{escape(str(tuple(p.shape)))}</td>"
            f'<td class="num">{_num(p.relative_change)}</td><td class="num">{p.cosine:.6f}</td>'
            f'<td class="num">{_num(p.diff_norm)}</td><td class="num">{p.rank}</td>'
            f'<td class="num">{p.effective_rank:.3g}</td><td class="num">{singular}</td></tr>'
        )
    return (
        '<table class="params"><tr><th>#</th><th>tensor</th><th>layer</th><th>block</th><th>shape</th>'
        "<th>relative change</th><th>cosine</th><th>‖B−A‖</th><th>rank</th><th>eff. rank</th>"
        f"<th>top singular values of B−A</th></tr>{''.join(rows)}</table>"
    )


def _block_rows(result: WeightDiff) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.block_type)}</td><td class='num'>{s.n_tensors}</td>"
        f"<td class='num'>{_num(s.mean_relative_change)}</td><td class='num'>{_num(s.max_relative_change)}</td>"
        f"<td class='num'>{_num(s.pooled_relative_change)}</td><td class='name tok'>{escape(s.most_changed)}</td></tr>"
        for s in sorted(result.blocks, key=lambda s: (-s.pooled_relative_change, -s.mean_relative_change))
    )
    return (
        '<table class="blocks"><tr><th>block</th><th>tensors</th><th>mean</th><th>max</th><th>pooled</th>'
        f"<th>most changed</th></tr>{rows}</table>"
    )


def most_changed(result: WeightDiff, top: int) -> list[ParamDiff]:
    """The ``top`` most-changed tensors among those that changed (relative change above 0)."""
    return [p for p in result.ranked_params() if p.relative_change > 0.0][:top]


def render_weights_diff_html(result: WeightDiff, *, top: int = 20) -> str:
    """The diff as one HTML document (a string) showing the ``top`` most-changed tensors; opens offline."""
    tolerance = "numpy's default" if result.rank_rtol is None else f"rtol = {result.rank_rtol:g}"
    changed = sum(p.diff_norm > 0.0 for p in result.params)
    verdict = "The checkpoints are identical." if result.identical else f"{changed} of {len(result.params)} changed."
    listed = most_changed(result, top)
    intro = (
        f'<p>Base (A): <span class="name tok" id="base">{escape(result.base)}</span><br>'
        f'Fine-tuned (B): <span class="name tok" id="finetuned">{escape(result.finetuned)}</span><br>'
        f"{len(result.params)} tensors compared at {escape(result.created_at)}. {verdict}</p>"
        '<p class="legend">Relative change is ‖B−A‖<sub>F</sub> / ‖A‖<sub>F</sub> (∞ for a tensor that was zero '
        f"in the base); rank tolerance: {escape(tolerance)}.</p>"
    )
    heading = f"The {len(listed)} most-changed tensors" if listed else "Most-changed tensors"
    return render_page(
        "mechscope weight diff",
        model=f"{result.base} → {result.finetuned}",
        shows="How much each tensor, layer and block type of the fine-tuned checkpoint moved from the base.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "weights-diff.json", "result JSON"),
        sections=[
            ("Relative change per layer", _layer_chart(result)),
            ("Pooled relative change by layer and block", _heatmap(result, change_scale(result))),
            (heading, _param_rows(listed)),
            ("By block type", _block_rows(result)),
        ],
    )
