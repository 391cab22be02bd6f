"""The HTML page of one MoE layer's compression analysis (`mechscope.moe.compression_results.Compression`).

Three experts x experts heatmaps of cosine similarity on one signed scale (-1 .. 1, 0 white): the weights as
stored (raw), the weights after aligning hidden units, and the experts' outputs on the corpus (grey where not
measured); the SVD overlay's relative reconstruction error by rank, aligned and unaligned base, as a line
chart and a table with parameter counts; the merge candidates, cold experts and the measured edits. Every
string is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Literal

from mechscope.moe.compression_results import Compression
from mechscope.viz.charts import Series, download_json, figure, heatmap, legend, line_chart, num, table
from mechscope.viz.colors import Scale
from mechscope.viz.page import render_page

#: The one scale of the three similarity maps.
COSINE = Scale.signed("cosine similarity", 1.0)
_Kind = Literal["raw", "aligned", "output"]
_KINDS: tuple[tuple[_Kind, str], ...] = (
    ("raw", "Weights as stored (raw cosine)"),
    ("aligned", "Weights after aligning hidden units"),
    ("output", "Outputs on the corpus (tokens routed to either expert)"),
)


def _similarity_map(result: Compression, kind: _Kind, title: str) -> str:
    grid = result.matrix(kind)
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    names = [f"E{e}" for e in range(result.n_experts)]

    def tip(r: int, c: int, v: float) -> str:
        return f"experts {r} and {c}: {title.lower()}: " + ("not measured" if math.isnan(v) else f"{v:.4f}")

    svg = heatmap(
        values,
        rows=names,
        columns=names,
        scale=COSINE,
        x_title="expert",
        y_title="expert",
        cell=28,
        cell_width=40,
        tip=tip,
        cell_attrs=lambda r, c, v: {"class": f"sim-{kind}", "data-a": str(r), "data-b": str(c)},
        text=lambda r, c, v: "" if math.isnan(v) else f"{v:.2f}",
        label=f"{kind} cosine, expert x expert",
    )
    return figure(svg, filename=f"moe-compression-{kind}.svg", caption=title + ".")


def _overlay_section(result: Compression) -> str:
    # Rank 0 is the base alone: every line starts there, so one asked-for rank still draws a line.
    ranks = [0.0, *(float(r.rank) for r in result.overlay)]
    aligned = [result.base_error, *(r.relative_error for r in result.overlay)]
    unaligned = [result.unaligned_base_error, *(r.unaligned_error for r in result.overlay)]
    chart = line_chart(
        [
            Series("aligned base", ranks, aligned, {"kind": "aligned"}),
            Series("unaligned base", ranks, unaligned, {"kind": "unaligned"}),
        ],
        x_title="rank of each expert's residual (0: the base alone)",
        y_title="relative error",
        label="overlay reconstruction error by rank",
    )
    rows: list[list[str | float | int]] = [
        [r.rank, r.relative_error, r.unaligned_error, r.max_expert_error, r.parameters, f"{100 * r.savings:.1f}%"]
        for r in result.overlay
    ]
    header = ["rank", "relative error", "unaligned base", "worst expert", "parameters", "savings"]
    return (
        f'<p class="legend">Each expert = shared base + its residual truncated to rank r (SVD). Relative error is '
        f"the Frobenius norm of what is lost over that of the experts' matrices; the base alone loses "
        f"{num(result.base_error)} (unaligned: {num(result.unaligned_base_error)}). The experts hold "
        f"{result.original_parameters} matrix parameters; the overlay stores base + factors (negative savings: "
        f"larger than the experts).</p>"
        + figure(chart, filename="moe-compression-overlay.svg", caption="Reconstruction error by rank.")
        + table(header, rows, css="overlay")
    )


def _summary(result: Compression) -> str:
    if result.merge_candidates is None:
        candidates = "not measured (no corpus)"
    else:
        candidates = ", ".join(f"{a}+{b}" for a, b in result.merge_candidates) or "none"
    cold = "not measured (no corpus)" if result.cold is None else ", ".join(map(str, result.cold)) or "none"
    lines = [
        f"Merge candidates (aligned weight cosine ≥ {num(result.weight_threshold)} and output cosine ≥ "
        f"{num(result.output_threshold)}): <b>{escape(candidates)}</b>.",
        f"Aligned cosine of two unrelated experts with these weight statistics (the null): "
        f"{'—' if result.aligned_cosine_null is None else num(result.aligned_cosine_null)}.",
        f"Cold experts (share of tokens below {num(result.cold_threshold)}): {escape(cold)}.",
    ]
    if result.share is not None:
        shares = ", ".join(f"E{e} {num(s)}" for e, s in enumerate(result.share))
        lines.append(f"Share of the {result.tokens} corpus tokens (sums to top-{result.top_k}): {escape(shares)}.")
    return "".join(f'<p class="legend">{line}</p>' for line in lines)


def _verified(result: Compression) -> str:
    rows: list[list[str | float | int]] = [
        [v.edit.label(), v.base_loss, v.edited_loss, f"{v.loss_change:+.4f}", v.top1_agreement, v.kl]
        for v in result.verified
    ]
    header = ["edit", "loss (nats)", "edited loss", "change", "top-1 agreement", "KL (nats)"]
    note = (
        f'<p class="legend">Each edit written into layer {result.layer} in memory (restored after) and measured '
        "on the corpus against the unedited model: mean next-token loss, share of positions whose top-1 "
        "token is unchanged, mean KL(unedited ‖ edited).</p>"
    )
    return note + table(header, rows, css="verified")


def render_compression_html(result: Compression) -> str:
    """The compression analysis of one layer as one HTML document (a string); opens offline."""
    maps = legend(COSINE) + "".join(_similarity_map(result, kind, title) for kind, title in _KINDS)
    sections = [
        ("Expert similarity", maps + _summary(result)),
        ("SVD overlay", _overlay_section(result)),
    ]
    if result.verified:
        sections.append(("Measured edits", _verified(result)))
    return render_page(
        f"mechscope MoE compression: {result.model} layer {result.layer}",
        model=result.model,
        shows=(
            f"How alike the {result.n_experts} experts of layer {result.layer} are, and what merging them or "
            "sharing a low-rank base would cost, measured."
        ),
        downloads=download_json(result.model_dump_json(), "moe-compression.json", "result JSON"),
        sections=sections,
    )
