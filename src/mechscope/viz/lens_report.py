"""A self-contained HTML report of a lens result: nothing from the network, every token escaped.

The page has a layers x positions heatmap of the top token, coloured by its probability on the one documented
sequential scale [0, 1] (a legend states it; hover a cell for the runners-up), and a chart of each tracked
token's probability (or, with ``log_prob``, its natural-log probability) against the layer, layers at their
real positions. Each figure can be downloaded as SVG or PNG, and the result the page was made from as JSON.
Token strings are user data and go through ``html.escape`` everywhere, in text and in attributes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from html import escape

from mechscope.lens.results import LensGrid, LensResult
from mechscope.text import show_whitespace
from mechscope.viz.charts import Series, clip, download_json, figure, heatmap, legend, line_chart, table, visible
from mechscope.viz.colors import UNIT
from mechscope.viz.page import render_page

#: The heatmap's scale: the shared [0, 1] probability scale, named for what it colours here.
TOP_PROB = replace(UNIT, name="probability of the top token")
#: The log-probability chart's floor: probabilities below it are drawn at ``ln LOG_FLOOR``.
LOG_FLOOR = 1e-6


def _heatmap(grid: LensGrid) -> str:
    """Layers (rows) x positions (columns): each cell names its top token, coloured by that token's probability."""
    probs = [[cell.top[0].prob for cell in cells] for cells in grid.cells]
    shown = [[clip(show_whitespace(cell.top[0].token), 7) for cell in cells] for cells in grid.cells]
    widest = max((len(t) for row in shown for t in row), default=1)

    def tip(r: int, c: int, _: float) -> str:
        top = ", ".join(f"{t.token!r} {t.prob:.3f}" for t in grid.cells[r][c].top)
        return f"layer {grid.layers[r]}, position {c} ({grid.tokens[c]!r}): {top}"

    def attrs(r: int, c: int, p: float) -> dict[str, str]:
        best = grid.cells[r][c].top[0].token
        return {"class": "cell", "data-layer": str(grid.layers[r]), "data-position": str(c), "data-token": best}

    svg = heatmap(
        probs,
        rows=[f"L{layer}" for layer in grid.layers],
        columns=[f"{i}:{show_whitespace(t)}" for i, t in enumerate(grid.tokens)],
        scale=TOP_PROB,
        x_title="position: input token",
        y_title="layer",
        cell=20,
        cell_width=max(24, 7 * widest + 8),
        tip=tip,
        cell_attrs=lambda r, c, p: {**attrs(r, c, p), "data-prob": f"{p:.4f}"},
        text=lambda r, c, _: shown[r][c],
        label="top token per layer and position",
    )
    return figure(svg, filename="lens-heatmap.svg", caption="Top token per layer and position.", scroll="scroll lens")


def _curves(result: LensResult, *, log_prob: bool) -> str:
    if not result.token_evolutions or not result.layer_predictions:
        return ""
    floor = math.log(LOG_FLOOR)

    def ys(probs: list[float]) -> list[float]:
        return [math.log(max(p, LOG_FLOOR)) for p in probs] if log_prob else probs

    series = [
        Series(show_whitespace(e.token), e.layers, ys(e.probs), data={"token": e.token})
        for e in result.token_evolutions
    ]
    if log_prob:
        svg = line_chart(
            series,
            x_title="layer",
            y_title="log probability (ln p)",
            y_low=floor,
            y_high=0.0,
            label="tracked token log-probabilities by layer",
        )
        caption = (
            f"Log-probability (natural log) of each tracked token at the last position; clipped at ln {LOG_FLOOR:g}."
        )
        return figure(svg, filename="tracked-tokens-log.svg", caption=caption)
    svg = line_chart(series, x_title="layer", y_title="probability", label="tracked token probabilities by layer")
    return figure(svg, filename="tracked-tokens.svg", caption="Probability of each tracked token at the last position.")


def _layer_table(result: LensResult) -> str:
    rows: list[list[str | float | int]] = [
        [p.layer, p.top_token.replace(" ", "␣"), p.top[0].prob, p.entropy, p.kl_to_final]
        for p in result.layer_predictions
    ]
    return table(["layer", "top-1", "p", "entropy (nats)", "KL to final"], rows, css="layers")


def render_lens_html(
    result: LensResult, grid: LensGrid, *, model: str = "", lens: str = "logit", log_prob: bool = False
) -> str:
    """The report as one HTML document (a string); write it anywhere and open it offline.

    ``log_prob`` draws the tracked tokens' chart as natural-log probabilities (clipped at ``ln LOG_FLOOR``),
    which separates the small probabilities of early layers that a linear axis flattens at 0.
    """
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
        "Hover a cell for the runners-up; the last positions are shown first (scroll left for the start).</p>"
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
            ("Tracked tokens at the last position", _curves(result, log_prob=log_prob)),
            ("Per layer at the last position", _layer_table(result)),
        ],
    )
