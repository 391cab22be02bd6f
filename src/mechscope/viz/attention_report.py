"""A self-contained HTML attention report: every head's pattern, the chosen head large, layers x heads tables.

Built from a `LayerAttention` result (token strings, nested lists of floats), never from a model. The page
draws every head of the layer as a small multiple (query tokens down, key tokens across; hover a cell for its
weight; the small multiples are images, whose values the page's script reads from the result), the chosen
head (or the mean over heads) large, and the layers x heads tables on documented scales:
attention weights, sink mass and role scores share the one sequential scale [0, 1]; entropy in nats has its
own, 0 .. log(number of tokens). Every token string is escaped, in text and in attributes; figures download
as SVG or PNG and the result as JSON. Click a small multiple to enlarge it.
"""

from __future__ import annotations

from html import escape

from mechscope.attention.results import LayerAttention
from mechscope.viz.charts import download_json, figure, heatmap, legend, visible
from mechscope.viz.colors import UNIT, Scale, entropy_scale, ink
from mechscope.viz.page import render_page


def _labels(tokens: list[str]) -> list[str]:
    return [f"{i}:{t.replace(' ', '␣').replace(chr(10), '⏎')}" for i, t in enumerate(tokens)]


def pattern(tokens: list[str], weights: list[list[float]], *, cell: int = 22, values: str | None = None) -> str:
    """A query (rows) x key (columns) SVG heatmap of attention weights on the [0, 1] scale; hover for values.

    With ``values`` (the path of these weights in the page's result JSON, e.g. ``patterns.3``) the cells are
    drawn as one image, and the page's script reads the values on hover from the result; without it, one
    rect per cell carries its own hover text and ``data-*`` attributes.
    """

    def tip(q: int, k: int, w: float) -> str:
        return f"{tokens[q]!r} -> {tokens[k]!r}: {w:.3f}"

    def attrs(q: int, k: int, w: float) -> dict[str, str]:
        return {"class": "w", "data-query": str(q), "data-key": str(k), "data-weight": f"{w:.4f}"}

    labels = _labels(tokens)
    raster = None if values is None else {"data-values": values, "data-rows": "tokens", "data-columns": "tokens"}
    return heatmap(
        weights,
        rows=labels,
        columns=labels,
        scale=UNIT,
        x_title="key",
        y_title="query",
        cell=cell,
        tip=tip,
        cell_attrs=attrs,
        raster=raster,
        label="attention weights, query x key",
    )


def multiples(result: LayerAttention) -> str:
    """Every head's pattern at ``result.layer``, small, in a wrapping grid; a click enlarges one (CSS focus)."""
    cell = max(6, min(14, 200 // max(1, len(result.tokens))))
    figures = [
        figure(
            pattern(result.tokens, weights, cell=cell, values=f"patterns.{h}"),
            filename=f"attention-L{result.layer}-H{h}.svg",
            caption=f"head {h}",
            css="multiple",
            data={"head": str(h)},
            focusable=True,
        )
        for h, weights in enumerate(result.patterns)
    ]
    return f'<div class="multiples">{"".join(figures)}</div>'


def overview(name: str, scores: list[list[float]], scale: Scale = UNIT) -> str:
    """A layers x heads table of one score (entropy, a role score ...), coloured on ``scale`` (not its own peak)."""
    n_heads = len(scores[0]) if scores else 0
    head = "".join(f"<th>H{h}</th>" for h in range(n_heads))
    rows = []
    for layer, row in enumerate(scores):
        tds = []
        for h, v in enumerate(row):
            background = scale.colour(v)
            tds.append(
                f'<td data-layer="{layer}" data-head="{h}" data-value="{v:.4f}" '
                f'style="background:{background};color:{ink(background)}">{v:.2f}</td>'
            )
        rows.append(f"<tr><th>L{layer}</th>{''.join(tds)}</tr>")
    attribute = escape(name, quote=True)
    return (
        f'<table class="overview" data-score="{attribute}" data-scale="{escape(scale.name, quote=True)}">'
        f"<tr><th>{escape(name)}</th>{head}</tr>{''.join(rows)}</table>"
    )


def render_attention_html(result: LayerAttention, *, title: str) -> str:
    """The report of one `LayerAttention` as one HTML document."""
    shown = f"head {result.head}" if result.head is not None else "mean over heads"
    entropy = entropy_scale(len(result.tokens))
    large = figure(
        pattern(result.tokens, result.shown()),
        filename=f"attention-L{result.layer}-{'H' + str(result.head) if result.head is not None else 'mean'}.svg",
        caption=f"Layer {result.layer}, {shown}.",
        css="chart main-pattern",
    )
    tables = [f"<h3>entropy (nats)</h3>{legend(entropy)}{overview('entropy (nats)', result.entropy, entropy)}"]
    unit_tables = {"sink mass": result.sink_mass}
    unit_tables.update({f"{name} score": scores for name, scores in result.roles.items()})
    tables.append(
        f"<h3>Scores in [0, 1]</h3>{legend(UNIT)}"
        + "".join(f"<h4>{escape(name)}</h4>{overview(name, scores)}" for name, scores in unit_tables.items())
    )
    tokens = " ".join(f'<span class="tok">{visible(t)}</span>' for t in result.tokens)
    intro = f'<p>Prompt: <span class="tok">{escape(result.prompt)}</span></p><p>Tokens: {tokens}</p>'
    return render_page(
        title,
        model="",
        shows=f"Where the heads of layer {result.layer} attend on one prompt ({len(result.tokens)} tokens), "
        "and per-head summaries of every layer.",
        intro=intro,
        downloads=download_json(
            result.model_dump_json(), f"attention-L{result.layer}.json", "result JSON", result=True
        ),
        sections=[
            (f"Every head of layer {result.layer}", f"{legend(UNIT)}{multiples(result)}"),
            (f"Layer {result.layer}, {shown}", large),
            ("Layers x heads", "".join(tables)),
        ],
    )
