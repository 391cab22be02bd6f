"""A self-contained HTML report of a lens result: no scripts, nothing from the network, every token escaped.

The page has a layers x positions heatmap of the top token, coloured by its probability on the one documented
sequential scale [0, 1] (a legend states it; hover a cell for the runners-up), and a chart of each tracked
token's probability against the layer, layers at their real positions. Each figure can be downloaded as SVG,
and the result the page was made from as JSON. Token strings are user data and go through ``html.escape``
everywhere, in text and in attributes.
"""

from __future__ import annotations

from dataclasses import replace
from html import escape

from mechscope.lens.results import LensGrid, LensResult
from mechscope.viz.charts import Series, download_json, figure, legend, line_chart, table, visible
from mechscope.viz.colors import UNIT, ink
from mechscope.viz.page import render_page

#: The heatmap's scale: the shared [0, 1] probability scale, named for what it colours here.
TOP_PROB = replace(UNIT, name="probability of the top token")


def _heatmap(grid: LensGrid) -> str:
    head = "".join(f'<th class="token tok" title="{visible(t)}">{visible(t)}</th>' for t in grid.tokens)
    rows = []
    for layer, cells in zip(grid.layers, grid.cells, strict=True):
        tds = []
        for position, cell in enumerate(cells):
            best = cell.top[0]
            detail = ", ".join(f"{t.token!r} {t.prob:.3f}" for t in cell.top)
            background = TOP_PROB.colour(best.prob)
            tds.append(
                f'<td class="cell tok" data-layer="{layer}" data-position="{position}" '
                f'data-token="{escape(best.token, quote=True)}" data-prob="{best.prob:.4f}" '
                f'style="background:{background};color:{ink(background)}" '
                f'title="layer {layer}, position {position}: {escape(detail, quote=True)}">{visible(best.token)}</td>'
            )
        rows.append(f"<tr><th>L{layer}</th>{''.join(tds)}</tr>")
    return f'<table class="heatmap"><tr><th>layer \\ position</th>{head}</tr>{"".join(rows)}</table>'


def _curves(result: LensResult) -> str:
    if not result.token_evolutions or not result.layer_predictions:
        return ""
    series = [
        Series(e.token.replace(" ", "␣"), e.layers, e.probs, data={"token": e.token}) for e in result.token_evolutions
    ]
    svg = line_chart(series, x_title="layer", y_title="probability", label="tracked token probabilities by layer")
    return figure(svg, filename="tracked-tokens.svg", caption="Probability of each tracked token at the last position.")


def _layer_table(result: LensResult) -> str:
    rows: list[list[str | float | int]] = [
        [p.layer, p.top_token.replace(" ", "␣"), p.top[0].prob, p.entropy, p.kl_to_final]
        for p in result.layer_predictions
    ]
    return table(["layer", "top-1", "p", "entropy (nats)", "KL to final"], rows, css="layers")


def render_lens_html(result: LensResult, grid: LensGrid, *, model: str = "", lens: str = "logit") -> str:
    """The report as one HTML document (a string); write it anywhere and open it offline."""
    emergence = "never" if result.emergence_layer is None else f"layer {result.emergence_layer}"
    title = f"mechscope {lens} lens: {model}" if model else f"mechscope {lens} lens"
    intro = (
        f'<p>Prompt: <span class="tok" id="prompt">{escape(result.prompt)}</span></p>'
        f'<p>Prediction: <b class="tok" id="prediction">{visible(result.predicted_token)}</b> '
        f"(p = {result.predicted.prob:.3f}); top-1 from {emergence}.</p>"
    )
    heatmap = (
        f"{legend(TOP_PROB)}"
        '<p class="legend">Each cell shows the top token; its colour is that token\'s probability. '
        "Hover a cell for the runners-up.</p>"
        f"{_heatmap(grid)}"
    )
    downloads = download_json(result.model_dump_json(), "lens-result.json", "result JSON") + download_json(
        grid.model_dump_json(), "lens-grid.json", "grid JSON"
    )
    return render_page(
        title,
        model=model,
        shows=f"What the {lens} lens reads from each layer's residual stream, at every position of one prompt.",
        intro=intro,
        downloads=downloads,
        sections=[
            ("Top token per layer and position", heatmap),
            ("Tracked tokens at the last position", _curves(result)),
            ("Per layer at the last position", _layer_table(result)),
        ],
    )
