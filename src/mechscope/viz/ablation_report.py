"""A self-contained HTML report of an ablation sweep: no script, nothing from the network, every text escaped.

For a logit metric the page names the metric in its header and shows the change from the clean run
(``ablated − clean``) on a diverging scale, symmetric around 0 (white: no change, blue: the metric drops, red:
it rises). The scale's limit is ``|clean metric|`` (so full blue means the whole clean value was lost), or the
largest change where the clean metric is 0; the legend states it. A head or expert sweep is a layers x heads
(experts) heatmap, any other sweep a per-layer table. For a text criterion the page has one row per ablation
with the generated text and whether the criterion held. Figures download as SVG or PNG and the result as JSON.
"""

from __future__ import annotations

from html import escape

from mechscope.causal.results import AblationEffect, AblationResult
from mechscope.viz.charts import download_json, figure, heatmap, legend, metric_name, num, table
from mechscope.viz.colors import Scale, ink
from mechscope.viz.page import render_page

#: The cell of a generated text: monospace, wrapped, left-aligned.
TEXT_CELL = '<td class="text" style="font-family:ui-monospace,monospace;white-space:pre-wrap;text-align:left">'

#: The name of the index axis for sweeps whose components have one.
AXES = {"head": "head", "expert": "expert"}


def change_scale(result: AblationResult) -> Scale:
    """The diverging scale of the changes: ``±|clean metric|``, or ``±`` the largest change if that is 0."""
    limit = abs(result.clean_metric or 0.0)
    if limit < 1e-9:
        limit = max((abs(e.delta) for e in result.effects if e.delta is not None), default=1.0)
    return Scale.signed(f"change in {metric_name(result.metric)} from clean", limit)


def _indexed(result: AblationResult) -> bool:
    """A single head or expert sweep: one index per component, drawn as a layers x index heatmap."""
    return result.component in AXES and any(e.index is not None for e in result.effects)


def _heatmap(result: AblationResult, scale: Scale, *, data: bool = True) -> str:
    layers = sorted({e.layer for e in result.effects})
    indices = sorted({e.index for e in result.effects if e.index is not None})
    cell = {(e.layer, e.index): e for e in result.effects}
    axis = AXES[result.component]
    values = [
        [
            d if (d := getattr(cell.get((layer, index)), "delta", None)) is not None else float("nan")
            for index in indices
        ]
        for layer in layers
    ]

    def tip(row: int, column: int, value: float) -> str:
        where = f"layer {layers[row]}, {axis} {indices[column]}"
        return f"{where}: not measured" if value != value else f"{where}: {value:+.3f}"

    def attrs(row: int, column: int, value: float) -> dict[str, str]:
        out = {"data-layer": str(layers[row]), "data-index": str(indices[column])}
        if value == value:  # not NaN: a measured cell
            out["data-delta"] = f"{value:.4f}"
        return out

    return heatmap(
        values,
        rows=[f"L{layer}" for layer in layers],
        columns=[str(index) for index in indices],
        scale=scale,
        x_title=axis,
        y_title="layer",
        cell=22,
        tip=tip,
        cell_attrs=attrs if data else None,
        label=f"change in the metric when each {axis} is ablated, layer x {axis}",
    )


def _layer_table(result: AblationResult, scale: Scale) -> str:
    """One row per layer, one coloured column per component kind (``attn``, ``mlp`` ... for a grid)."""
    layers = sorted({e.layer for e in result.effects})
    kinds = list(dict.fromkeys(e.component for e in result.effects))
    cell = {(e.layer, e.component): e for e in result.effects}
    head = "".join(f"<th>{escape(kind)}</th>" for kind in kinds)
    rows = []
    for layer in layers:
        tds = []
        for kind in kinds:
            effect = cell.get((layer, kind))
            if effect is None or effect.delta is None:
                tds.append("<td></td>")
                continue
            background = scale.colour(effect.delta)
            metric = "" if effect.metric is None else f" (ablated metric {effect.metric:.3f})"
            tds.append(
                f'<td class="num" data-layer="{layer}" data-component="{escape(kind, quote=True)}" '
                f'data-delta="{effect.delta:.4f}" style="background:{background};color:{ink(background)}" '
                f'title="{escape(kind, quote=True)} {layer}: {effect.delta:+.3f}{metric}">{effect.delta:+.3f}</td>'
            )
        rows.append(f"<tr><th>L{layer}</th>{''.join(tds)}</tr>")
    return f'<table class="layers"><tr><th>layer</th>{head}</tr>{"".join(rows)}</table>'


def _where(effect: AblationEffect) -> str:
    return f"{effect.component} {effect.layer}" + ("" if effect.index is None else f".{effect.index}")


def _criterion_table(result: AblationResult) -> str:
    """One row per ablation (the clean run first): what was ablated, whether the criterion held, the text."""

    def held(value: bool | None) -> str:
        return "—" if value is None else ("yes" if value else "no")

    rows = [
        '<tr class="clean"><td>none (clean run)</td>'
        f'<td data-criterion="{held(result.clean_criterion)}">{held(result.clean_criterion)}</td>'
        f"{TEXT_CELL}{escape(result.clean_text or '')}</td></tr>"
    ]
    for effect in result.effects:
        flipped = effect.criterion != result.clean_criterion
        css = ' class="flipped"' if flipped else ""
        mark = " (flipped)" if flipped else ""
        rows.append(
            f'<tr{css} data-layer="{effect.layer}" data-index="{"" if effect.index is None else effect.index}">'
            f"<td>{escape(_where(effect))}</td>"
            f'<td data-criterion="{held(effect.criterion)}">{held(effect.criterion)}{mark}</td>'
            f"{TEXT_CELL}{escape(effect.text or '')}</td></tr>"
        )
    return (
        '<table class="criterion" style="text-align:left"><tr><th>ablated</th><th>criterion held</th>'
        f"<th>generated text</th></tr>{''.join(rows)}</table>"
    )


def render_ablation_html(result: AblationResult, *, model: str = "") -> str:
    """The ablation sweep as one HTML document (a string); write it anywhere and open it offline."""
    title = f"mechscope ablation: {result.method} {result.component}" + (f" ({model})" if model else "")
    intro = f'<p>Prompt: <span class="tok" id="prompt">{escape(result.prompt)}</span></p>'
    if result.partial:
        intro += "<p><b>Partial result: the sweep was interrupted.</b></p>"
    downloads = download_json(result.model_dump_json(), "ablation-result.json", "result JSON")
    sections: list[tuple[str, str]]
    if result.clean_metric is not None:
        metric = metric_name(result.metric)
        scale = change_scale(result)
        intro = (
            f'<p>Metric: <b class="tok" id="metric">{escape(metric)}</b> (clean {result.clean_metric:.4f})</p>' + intro
        )
        note = (
            '<p class="legend">Each cell: the metric with that component ablated minus the clean metric. '
            f"White is no change, blue a drop, red a rise; full colour at ±{num(scale.high)} "
            "(|clean metric|, or the largest change when that is 0), beyond it clamped.</p>"
        )
        if _indexed(result):
            axis = AXES[result.component]
            drawing = figure(
                _heatmap(result, scale),
                filename=f"ablation-{result.component}.svg",
                caption=f"{result.method.capitalize()} ablation of each {result.component}.",
                scroll="scroll ablation",
            )
            heading = f"Change from clean per layer and {axis}"
        else:
            drawing, heading = _layer_table(result, scale), "Change from clean per layer"
        largest: list[list[str | float | int]] = [
            [_where(e), e.metric if e.metric is not None else float("nan"), e.delta or 0.0] for e in result.summary()
        ]
        sections = [
            (heading, f"{legend(scale)}{note}{drawing}"),
            ("Largest drops", table(["ablated", "metric", "change"], largest, css="top")),
        ]
        shows = f"Metric: {metric}. How the metric changes when each {result.component} is ablated ({result.method})."
    else:
        held = {True: "held", False: "did not hold", None: "not checked"}[result.clean_criterion]
        intro += f"<p>On the clean run the criterion {held}.</p>"
        flips = sum(e.criterion != result.clean_criterion for e in result.effects)
        sections = [
            (
                "Generated text per ablation",
                f'<p class="legend">{flips} of {len(result.effects)} ablations flip the criterion.</p>'
                f"{_criterion_table(result)}",
            )
        ]
        named = f" ({result.criterion})" if result.criterion else ""
        shows = (
            f"Metric: a text criterion{named} on the generated text. Whether it still holds when each "
            f"{result.component} is ablated ({result.method}), with the text generated."
        )
    return render_page(title, model=model, shows=shows, intro=intro, downloads=downloads, sections=sections)
