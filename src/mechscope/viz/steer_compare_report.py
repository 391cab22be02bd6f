"""An HTML page comparing a trained steering vector with the difference-of-means vector (`VectorComparison`).

A line chart of the cosine between the two vectors at each layer (the trained layer named in the caption), a
table of the difference-of-means norms per layer, and a table of the validation perplexities: vanilla, the
trained vector, the difference-of-means vector at its own norm and rescaled to the trained norm. Every string
(the model name, paths) is escaped.

Examples:
    >>> from mechscope.steering.compare_results import LayerComparison, VectorComparison
    >>> row = LayerComparison(layer=0, cosine=0.5, diff_norm=2.0, trained_layer=True)
    >>> result = VectorComparison(model="<script>x</script>", trained_layer=0, trained_norm=1.0,
    ...     positions="all", positive=2, negative=2, layers=[row])
    >>> page = render_steer_compare_html(result)
    >>> "&lt;script&gt;x" in page and "<script>x" not in page
    True
"""

from __future__ import annotations

from html import escape

from mechscope.steering.compare_results import VectorComparison
from mechscope.viz.charts import Series, download_json, figure, line_chart, num, table
from mechscope.viz.page import render_page


def _ppl(value: float | None) -> str | float:
    return "—" if value is None else value


def _cosine_chart(result: VectorComparison) -> str:
    xs = [float(row.layer) for row in result.layers]
    ys = [row.cosine for row in result.layers]
    low = -1.0 if min(ys, default=0.0) < 0 else 0.0
    svg = line_chart(
        [Series("cosine", xs, ys)],
        x_title="layer",
        y_title="cosine with the trained vector",
        y_low=low,
        y_high=1.0,
        label="cosine between the trained vector and the difference of means at each layer",
    )
    own = result.at_trained_layer()
    caption = f"Trained layer {own.layer}: cosine {num(own.cosine)}."
    return figure(svg, filename="steer-compare-cosine", caption=caption)


def _layer_table(result: VectorComparison) -> str:
    rows: list[list[str | float | int]] = [
        [row.layer, "trained layer" if row.layer == result.trained_layer else "", row.cosine, row.diff_norm]
        for row in result.layers
    ]
    return table(["layer", "", "cosine", "|diff of means|"], rows, css="steer-compare-layers")


def _ppl_table(result: VectorComparison) -> str:
    own = result.at_trained_layer()
    rows: list[list[str | float | int]] = [
        ["vanilla model", "—", _ppl(result.vanilla_ppl)],
        ["trained vector", result.trained_norm, _ppl(result.trained_ppl)],
        ["difference of means, its own norm", own.diff_norm, _ppl(result.diff_ppl)],
        ["difference of means, rescaled to the trained norm", result.trained_norm, _ppl(result.diff_rescaled_ppl)],
    ]
    return table(["added at the trained layer", "norm", "validation perplexity"], rows, css="steer-compare-ppl")


def render_steer_compare_html(result: VectorComparison) -> str:
    """The comparison as one HTML document (a string); opens offline."""
    data = escape(result.data or "records given in memory")
    intro = (
        f'<p class="legend">The trained vector (norm {num(result.trained_norm)}) is added at '
        f"{escape(result.site)}.{result.trained_layer}; the difference of means is the mean activation of "
        f"{result.positive} positive minus {result.negative} negative prompts (mean over positions) at each "
        "layer. The residual stream's basis is shared across layers, so the cosine is defined at every layer. "
        f"Perplexities are on the trained run's validation split ({result.val_examples} examples, "
        f"{result.val_loss_tokens} loss tokens, from {data}), each vector added at {escape(result.positions)} "
        "positions of the trained layer.</p>"
    )
    return render_page(
        f"mechscope steering vector comparison: {result.model}",
        model=result.model,
        shows="How the trained steering vector compares with the difference-of-means vector of the same trait.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "steer-compare.json", "result JSON"),
        sections=[
            ("Cosine by layer", _cosine_chart(result) + _layer_table(result)),
            ("Validation perplexity", _ppl_table(result)),
        ],
    )
