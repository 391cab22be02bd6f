"""A self-contained HTML page for `mechscope compare` on the shared page shell: no script, every token escaped.

The table has one row per aligned layer pair: model A's layer and its top token, model B's matching layer
(same relative depth) and its top token, and KL(A‖B) of the two next-token distributions there; rows where
the top tokens differ are highlighted. A line chart plots KL(A‖B) against model A's layer (layers without a
KL are skipped; when the models do not share a tokenizer nothing is compared token by token, and the page says
why). The chart can be downloaded as SVG and the result as JSON.
"""

from __future__ import annotations

from html import escape

from mechscope.lens.results import Comparison
from mechscope.viz.charts import Series, download_json, figure, line_chart, num, visible
from mechscope.viz.page import render_page

_DIFFERENT = "#fde2e2"


def _table(result: Comparison) -> str:
    rows = []
    for row in result.layers:
        kl = "" if row.kl_a_to_b is None else f"{row.kl_a_to_b:.3f}"
        style = "" if row.same_top else f' style="background:{_DIFFERENT}"'
        rows.append(
            f'<tr class="layer" data-layer="{row.layer_a}" data-same="{str(row.same_top).lower()}"{style}>'
            f'<td class="num">{row.layer_a}</td><td class="tok">{visible(row.top_a.token)}</td>'
            f'<td class="num">{row.top_a.prob:.3f}</td><td class="num">{row.layer_b}</td>'
            f'<td class="tok">{visible(row.top_b.token)}</td><td class="num">{row.top_b.prob:.3f}</td>'
            f'<td class="num">{kl}</td></tr>'
        )
    explain = (
        '<p class="legend">One row per aligned pair of layers: model A\'s layer, the top token the lens reads '
        "there and its probability p; model B's layer at the same relative depth, its top token and p; and "
        "KL(A‖B) in nats between the two next-token distributions at the last position (empty when the models "
        f'are not compared token by token). <span style="background:{_DIFFERENT}">Highlighted</span> rows are '
        "layers where the top tokens differ. Spaces are shown as ␣.</p>"
    )
    head = (
        "<tr><th>layer (A)</th><th>top-1 (A)</th><th>p (A)</th><th>layer (B)</th><th>top-1 (B)</th>"
        "<th>p (B)</th><th>KL(A‖B) (nats)</th></tr>"
    )
    return f'{explain}<table class="compare">{head}{"".join(rows)}</table>'


def _kl_plot(result: Comparison) -> str:
    if not result.token_level:
        return (
            '<p class="legend no-kl">No KL per layer: the models are not compared token by token '
            f"({escape(result.reason or 'no reason given')}), so their distributions are over different "
            "vocabularies.</p>"
        )
    points = [(row.layer_a, row.kl_a_to_b) for row in result.layers if row.kl_a_to_b is not None]
    if not points:
        return '<p class="legend no-kl">No layer has a KL value.</p>'
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    high = max(ys) or 1.0
    svg = line_chart(
        [Series("KL(A‖B)", xs, ys)],
        x_title="layer of model A",
        y_title="KL(A‖B) (nats)",
        y_low=0.0,
        y_high=high,
        label="KL divergence per layer",
    )
    skipped = len(result.layers) - len(points)
    note = f" {skipped} layer(s) without a KL are skipped." if skipped else ""
    return figure(
        svg,
        filename="compare-kl.svg",
        caption=f"KL(A‖B) at the last position, per layer; the axis runs 0 .. {num(high)} nats.{note}",
    )


def render_compare_html(result: Comparison) -> str:
    """The comparison as one HTML document; diverging layers are highlighted, every token escaped."""
    if result.token_level:
        where = "nowhere" if result.first_divergence is None else f"first at layer {result.first_divergence}"
        verdict = f"The top tokens diverge {where}."
    else:
        verdict = f"Not compared token by token: {escape(result.reason or '')}."
    intro = (
        f'<p>Model A: <span class="tok" id="model-a">{escape(result.model_a)}</span><br>'
        f'Model B: <span class="tok" id="model-b">{escape(result.model_b)}</span></p>'
        f'<p>Prompt: <span class="tok" id="prompt">{escape(result.prompt)}</span></p>'
        f'<p>Predictions: <b class="tok">{visible(result.predicted_a)}</b> (A) vs '
        f'<b class="tok">{visible(result.predicted_b)}</b> (B). {verdict}</p>'
    )
    return render_page(
        "mechscope compare",
        model=f"{result.model_a} vs {result.model_b}",
        shows="What the logit lens reads from each layer of two models, side by side, at the last position.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "compare-result.json", "result JSON"),
        sections=[
            ("Top token per layer, model A and model B", _table(result)),
            ("KL divergence per layer", _kl_plot(result)),
        ],
    )
