"""A self-contained HTML report of activation patching: a layers x positions heatmap, no script, tokens escaped.

The page names the metric in its header (for example ``logit diff ␣Paris − ␣Tokyo``) and draws the normalised
effect of patching each (layer, position) from the clean run into the corrupted one: 0 is the corrupted run's
metric, 1 the clean run's. The effect has one fixed diverging scale, −1 .. 1 (white at 0, red towards the clean
run, blue past the corrupted one; values beyond are clamped), stated in the legend. A long prompt scrolls
sideways and opens scrolled to its end, so the last positions (where the answer is usually read) show first;
this is CSS only. The heatmap downloads as SVG or PNG and the result as JSON, offline.
"""

from __future__ import annotations

from html import escape

from mechscope.causal.results import PatchingResult
from mechscope.text import show_whitespace
from mechscope.viz.charts import download_json, figure, heatmap, legend, metric_name, table, visible
from mechscope.viz.colors import Scale
from mechscope.viz.page import render_page

#: The one scale of normalised patching effects: −1 .. 1, 0 = corrupted, 1 = clean.
EFFECT = Scale.signed("normalised effect (0 = corrupted, 1 = clean)", 1.0)


def position_labels(tokens: list[str]) -> list[str]:
    """``index:token`` for each position, whitespace made visible (not yet escaped)."""
    return [f"{i}:{show_whitespace(t)}" for i, t in enumerate(tokens)]


def effect_heatmap(
    layers: list[int], tokens: list[str], effects: list[list[float]], *, site: str, data: bool = True
) -> str:
    """The layers x positions SVG heatmap of ``effects`` on `EFFECT`; ``data`` adds ``data-*`` to each cell."""

    def tip(row: int, position: int, value: float) -> str:
        return f"{site}.{layers[row]} at position {position} {tokens[position]!r}: {value:.3f}"

    def attrs(row: int, position: int, value: float) -> dict[str, str]:
        return {"data-layer": str(layers[row]), "data-position": str(position), "data-effect": f"{value:.4f}"}

    return heatmap(
        effects,
        rows=[f"L{layer}" for layer in layers],
        columns=position_labels(tokens),
        scale=EFFECT,
        x_title="position (token)",
        y_title="layer",
        tip=tip,
        cell_attrs=attrs if data else None,
        label=f"normalised patching effect of {site}, layer x position",
    )


def render_patching_html(result: PatchingResult, *, model: str = "") -> str:
    """The patching result as one HTML document (a string); write it anywhere and open it offline."""
    metric = metric_name(result.metric)
    title = (
        f"mechscope activation patching ({result.site}): {model}" if model else f"mechscope patching ({result.site})"
    )
    tokens = " ".join(f'<span class="tok">{visible(t)}</span>' for t in result.tokens)
    intro = (
        f'<p>Metric: <b class="tok" id="metric">{escape(metric)}</b></p>'
        f'<p>Clean: <span class="tok" id="clean">{escape(result.clean_prompt)}</span> '
        f"(metric {result.clean_metric:.3f})<br>"
        f'Corrupted: <span class="tok" id="corrupted">{escape(result.corrupted_prompt)}</span> '
        f"(metric {result.corrupted_metric:.3f})</p>"
        f"<p>Tokens: {tokens}</p>"
    )
    if result.partial:
        intro += "<p><b>Partial result: the sweep was interrupted; only the first layers are shown.</b></p>"
    svg = effect_heatmap(result.layers, result.tokens, result.effects, site=result.site)
    body = (
        f"{legend(EFFECT)}"
        '<p class="legend">Each cell: the corrupted run with that layer and position patched from the clean run. '
        "0 = the corrupted metric, 1 = the clean metric; values outside −1 .. 1 take the end colours. "
        "Hover a cell for its value. The last positions are shown first; scroll left for the start of the "
        "prompt.</p>"
        + figure(
            svg, filename=f"patching-{result.site}.svg", caption=f"Patching {result.site}.", scroll="scroll patching"
        )
    )
    top: list[list[str | float | int]] = [
        [layer, position, show_whitespace(result.tokens[position]), effect] for layer, position, effect in result.top(5)
    ]
    return render_page(
        title,
        model=model,
        shows=f"Metric: {metric}. How much patching each (layer, position) of {result.site} from the clean run "
        "into the corrupted run restores the metric.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "patching-result.json", "result JSON"),
        sections=[
            ("Normalised effect per layer and position", body),
            ("Largest effects", table(["layer", "position", "token", "effect"], top, css="top")),
        ],
    )
