"""The HTML page of expert specialization (`Specialization`): domains x experts per layer, token types, labels.

Per MoE layer: a domains x experts heatmap of the top-k share (OLMoE's domain specialization, 0..1; the
uniform ``top_k / n_experts`` is stated under the legend; hover a cell for the top-1 share and the counts),
the same for token types, each expert's label with the rule's numbers and the token ids it owns, and the
most frequent token ids with their vocabulary specialization. A first section sums the layers up. Every
string from the result (domain names, tokens) is escaped.
"""

from __future__ import annotations

from dataclasses import replace

from mechscope.moe.specialization_results import ExpertShares, LayerSpecialization, Specialization
from mechscope.text import show_whitespace
from mechscope.viz.charts import download_json, figure, heatmap, legend, num, table
from mechscope.viz.colors import UNIT
from mechscope.viz.page import render_page

SHARE = replace(UNIT, name="top-k share: fraction of the group's tokens routed to the expert")


def _groups_map(result: Specialization, layer: LayerSpecialization, groups: list[ExpertShares], what: str) -> str:
    """One groups x experts heatmap of top-k shares; hover gives the top-1 share and the counts."""

    def tip(r: int, c: int, v: float) -> str:
        g = groups[r]
        return (
            f"layer {layer.layer}, {g.name}, expert {c}: top-k share {v:.3f} ({g.topk_counts[c]} of {g.tokens} "
            f"tokens), top-1 share {g.top1_share[c]:.3f} ({g.top1_counts[c]})"
        )

    svg = heatmap(
        [g.topk_share for g in groups],
        rows=[g.name for g in groups],
        columns=[f"E{e}" for e in range(result.n_experts)],
        scale=SHARE,
        x_title="expert",
        y_title=what,
        cell=22,
        cell_width=40,
        tip=tip,
        cell_attrs=lambda r, c, v: {
            "class": "share",
            "data-layer": str(layer.layer),
            "data-group": groups[r].name,
            "data-expert": str(c),
            "data-value": num(v),
        },
        text=lambda r, c, v: f"{v:.2f}",
        label=f"top-k share per {what} and expert, layer {layer.layer}",
    )
    name = what.replace(" ", "-")
    return figure(
        svg, filename=f"moe-{name}-L{layer.layer}.svg", caption=f"Layer {layer.layer}: top-k share per {what}."
    )


def _experts_table(layer: LayerSpecialization) -> str:
    rows: list[list[str | float | int]] = [
        [
            f"E{p.expert}",
            p.label,
            p.top_domain,
            p.top_domain_share,
            p.mean_domain_share,
            p.ratio,
            p.token_ids,
            " ".join(show_whitespace(t.token) for t in p.tokens[:8]) or "—",
        ]
        for p in layer.experts
    ]
    header = ["expert", "label", "top domain", "top share", "mean share", "ratio", "token ids owned", "most frequent"]
    return table(header, rows, css="experts")


def _tokens_table(layer: LayerSpecialization) -> str:
    rows: list[list[str | float | int]] = [
        [show_whitespace(t.token), t.token_id, t.occurrences, f"E{t.expert}", t.share] for t in layer.frequent_tokens
    ]
    return table(["token", "id", "occurrences", "top-1 expert", "share"], rows, css="tokens")


def render_specialization_html(result: Specialization) -> str:
    """Expert specialization as one HTML document (a string); opens offline."""
    note = (
        f'<p class="legend">Top-k share of expert i in a group = tokens of the group with i among their '
        f"top-{result.top_k} / tokens of the group (OLMoE's domain specialization); a group's shares sum to "
        f"{result.top_k}, and a router that ignores the group gives every expert {num(result.uniform)}.</p>"
    )
    summary_rows: list[list[str | float | int]] = [
        [
            layer.layer,
            layer.vocabulary_specialization,
            layer.token_ids,
            ", ".join(f"E{p.expert} ({p.top_domain}, ×{p.ratio:.2f})" for p in layer.experts if p.label == "specialist")
            or "—",
        ]
        for layer in result.layers
    ]
    domain_rows: list[list[str | float | int]] = [
        [d.name, d.prompts, d.tokens, " … ".join(d.span) if d.span else "all tokens"] for d in result.domains
    ]
    summary = (
        table(["layer", "vocabulary specialization", "token ids", "specialists"], summary_rows, css="summary")
        + f'<p class="legend">Vocabulary specialization: per token id, the fraction of its occurrences routed '
        f"first to its most frequent expert, averaged over ids weighted by occurrences. An expert is a specialist "
        f"when its largest domain share is at least {num(result.specialist_ratio)} × its mean share over the "
        f"domains.</p>" + table(["domain", "prompts", "tokens counted", "counted span"], domain_rows, css="domains")
    )
    sections = [("Summary", summary)]
    for layer in result.layers:
        body = (
            legend(SHARE)
            + note
            + _groups_map(result, layer, layer.domains, "domain")
            + _groups_map(result, layer, layer.token_types, "token type")
            + "<h3>Experts</h3>"
            + _experts_table(layer)
            + "<h3>Most frequent token ids</h3>"
            + _tokens_table(layer)
        )
        sections.append((f"Layer {layer.layer}", body))
    layers = f"{len(result.layers)} MoE layer" + ("s" if len(result.layers) != 1 else "")
    return render_page(
        f"mechscope MoE specialization: {result.model}",
        model=result.model,
        shows=(
            f"Which of {result.n_experts} experts (top-{result.top_k}) the tokens of {len(result.domains)} domains "
            f"({result.tokens} tokens) go to, on {layers}."
        ),
        downloads=download_json(result.model_dump_json(), "moe-specialization.json", "result JSON"),
        sections=sections,
    )
