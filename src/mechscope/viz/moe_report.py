"""HTML pages of mixture-of-experts routing: one prompt's routing (`RoutingTrace`), a corpus's utilization.

The trace page has three layers x tokens heatmaps on their documented scales: the top-1 expert (categorical
colours, the expert's number written in each cell), its routing weight (the sequential 0..1 scale) and the
router's entropy over all experts (0 .. ln n_experts nats); hovering a cell lists every chosen expert with
its weight. The utilization page is a layers x experts heatmap of each expert's share of the tokens (0..1;
a balanced layer gives every expert top_k / n_experts, stated under the legend), cold experts marked, and
a per-layer table of load entropy and load-balancing loss. Token strings are escaped everywhere.
"""

from __future__ import annotations

from dataclasses import replace
from html import escape

from mechscope.moe.results import RoutingTrace, Utilization
from mechscope.text import show_whitespace
from mechscope.viz.charts import download_json, figure, heatmap, legend, num, table, visible
from mechscope.viz.colors import UNIT, Scale, entropy_scale
from mechscope.viz.page import render_page


def _columns(tokens: list[str]) -> list[str]:
    return [f"{i}:{show_whitespace(t)}" for i, t in enumerate(tokens)]


def _trace_map(trace: RoutingTrace, values: list[list[float]], scale: Scale, what: str, *, text: bool) -> str:
    """One layers x tokens heatmap of ``values[layer row][token]``; hover lists every chosen expert."""

    def tip(r: int, c: int, _: float) -> str:
        routing = trace.layers[r]
        chosen = ", ".join(f"E{e} {w:.3f}" for e, w in zip(routing.experts[c], routing.weights[c], strict=True))
        return f"layer {routing.layer}, {trace.tokens[c]!r}: {chosen}; entropy {routing.entropy[c]:.3f} nats"

    def attrs(r: int, c: int, v: float) -> dict[str, str]:
        routing = trace.layers[r]
        return {"class": "route", "data-layer": str(routing.layer), "data-position": str(c), "data-value": num(v)}

    svg = heatmap(
        values,
        rows=[f"L{routing.layer}" for routing in trace.layers],
        columns=_columns(trace.tokens),
        scale=scale,
        x_title="position: token",
        y_title="MoE layer",
        cell=20,
        cell_width=26,
        tip=tip,
        cell_attrs=attrs,
        text=(lambda r, c, v: f"{int(v)}") if text else None,
        label=what,
    )
    name = what.split(",")[0].replace(" ", "-")
    return legend(scale) + figure(
        svg, filename=f"moe-{name}.svg", caption=what[0].upper() + what[1:] + ".", scroll="scroll moe"
    )


def render_trace_html(trace: RoutingTrace, *, model: str = "") -> str:
    """The routing of one prompt as one HTML document (a string); opens offline."""
    top = [[float(slots[0]) for slots in routing.experts] for routing in trace.layers]
    weight = [[slots[0] for slots in routing.weights] for routing in trace.layers]
    entropy = [routing.entropy for routing in trace.layers]
    experts = Scale.categories("top-1 expert", trace.n_experts)
    tokens = " ".join(f'<span class="tok">{visible(t)}</span>' for t in trace.tokens)
    intro = (
        f'<p>Prompt: <span class="tok" id="prompt">{escape(trace.prompt)}</span></p><p>Tokens: {tokens}</p>'
        f'<p class="legend">{trace.n_experts} experts, top-{trace.top_k}. Hover a cell for every chosen expert '
        "and its weight.</p>"
    )
    sections = [
        ("Top-1 expert per layer and token", _trace_map(trace, top, experts, "top-1 expert, layer x token", text=True)),
        (
            "Weight of the top-1 expert",
            _trace_map(trace, weight, replace(UNIT, name="routing weight"), "top-1 routing weight", text=False),
        ),
        (
            "Router entropy",
            _trace_map(
                trace,
                entropy,
                replace(entropy_scale(trace.n_experts), name="router entropy (nats)"),
                "router entropy over all experts (nats)",
                text=False,
            ),
        ),
    ]
    return render_page(
        f"mechscope MoE routing: {model}" if model else "mechscope MoE routing",
        model=model,
        shows=f"Which experts each token of one prompt is routed to, on each of {len(trace.layers)} MoE layers.",
        intro=intro,
        downloads=download_json(trace.model_dump_json(), "moe-trace.json", "result JSON"),
        sections=sections,
    )


def render_utilization_html(result: Utilization) -> str:
    """Expert utilization over a corpus as one HTML document (a string); opens offline."""
    share = replace(UNIT, name="share of tokens routed to the expert")
    balanced = result.top_k / result.n_experts
    cold = {(u.layer, e) for u in result.layers for e in u.cold}

    def tip(r: int, c: int, v: float) -> str:
        u = result.layers[r]
        return f"layer {u.layer}, expert {c}: share {v:.3f} ({u.counts[c]} tokens)" + (
            " (cold)" if (u.layer, c) in cold else ""
        )

    svg = heatmap(
        [u.share for u in result.layers],
        rows=[f"L{u.layer}" for u in result.layers],
        columns=[f"E{e}" for e in range(result.n_experts)],
        scale=share,
        x_title="expert",
        y_title="MoE layer",
        cell=22,
        cell_width=40,
        tip=tip,
        cell_attrs=lambda r, c, v: {"class": "share", "data-layer": str(result.layers[r].layer), "data-expert": str(c)},
        text=lambda r, c, v: "cold" if (result.layers[r].layer, c) in cold else f"{v:.2f}",
        label="share of tokens per expert, layer x expert",
    )
    body = (
        f"{legend(share)}"
        f'<p class="legend">A token counts once for each of its top-{result.top_k} experts, so a layer\'s shares '
        f"sum to {result.top_k}; perfectly balanced is {num(balanced)} per expert. Cells marked cold are below "
        f"{num(result.cold_threshold)}.</p>"
        + figure(svg, filename="moe-utilization.svg", caption="Share of tokens per expert.")
    )
    rows: list[list[str | float | int]] = [
        [u.layer, u.load_entropy_normalised, u.load_balancing_loss, ", ".join(map(str, u.cold)) or "—"]
        for u in result.layers
    ]
    summary = (
        f'<p class="legend">Load entropy H / ln N: 1 is perfectly balanced, 0 is one expert. Load-balancing loss as '
        f"transformers defines it (≈ {result.top_k} when balanced); all layers pooled: "
        f"{result.load_balancing_loss:.4f}.</p>"
        + table(["layer", "H / ln N", "balancing loss", "cold experts"], rows, css="balance")
    )
    return render_page(
        f"mechscope MoE utilization: {result.model}",
        model=result.model,
        shows=f"How {result.tokens} tokens of {result.prompts} prompts spread over {result.n_experts} experts.",
        downloads=download_json(result.model_dump_json(), "moe-utilization.json", "result JSON"),
        sections=[("Share of tokens per expert", body), ("Balance per layer", summary)],
    )
