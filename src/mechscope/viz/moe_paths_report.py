"""HTML pages of routing paths (`Pipeline`), co-activation (`Coactivation`) and routing prediction, and the
pipeline as a circuit graph.

The pipeline page has a layers x experts heatmap of top-1 shares, one source x target heatmap of
``P(target | source)`` per pair of consecutive MoE layers (0..1; hover for the count and the lift over
independent layers; a source expert nobody chose is grey) and a table of the most frequent full paths with
their chance and first-order-chain baselines. The co-activation page is an expert x expert heatmap of
``P(j | i)`` (diagonal grey) with a table of the most frequent pairs against their baseline. The prediction
page is a from-layer x to-layer heatmap of probe accuracy with the majority baseline beside it. Every string
is escaped (through the chart kit).

`pipeline_graph` turns a `Pipeline` into a `CircuitGraph` (nodes ``L{layer}E{expert}`` carrying their top-1
share, edges their transition probability) for the circuit exports (DOT, Mermaid, the circuit HTML page).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from mechscope.causal.results import CircuitGraph, Edge, Node
from mechscope.moe.path_results import Coactivation, Pipeline, RoutingPrediction, Transition
from mechscope.viz.charts import download_json, figure, heatmap, legend, num, table
from mechscope.viz.colors import UNIT
from mechscope.viz.page import render_page

#: Above this many experts a matrix is drawn as one image (no per-cell text or hover).
_RASTER_ABOVE = 32


def path_text(experts: list[int]) -> str:
    """A full path as text.

    >>> path_text([2, 2, 1])
    'E2 → E2 → E1'
    """
    return " → ".join(f"E{e}" for e in experts)


def pipeline_graph(result: Pipeline, *, threshold: float = 0.3, min_tokens: int = 1) -> CircuitGraph:
    """The pipeline as a layered graph: an edge ``L{a}E{i} → L{b}E{j}`` where ``P(j | i) >= threshold``.

    Nodes are the experts at the ends of a kept edge, each carrying its top-1 share at its layer as its
    ``effect``; edges carry ``P(target | source)`` as their ``weight``, and only transitions seen at least
    ``min_tokens`` times count (a source expert chosen once would otherwise give probability-1 edges). The
    ``input`` node joins the kept experts of the earliest layer and the ``output`` node those of the latest,
    weighted by their share, as circuit graphs are drawn. No edge passes: only ``input`` and ``output``.

    Examples:
        >>> from mechscope.moe.path_results import Transition
        >>> t = Transition(source_layer=0, target_layer=1, counts=[[3, 1], [0, 4]],
        ...                probability=[[0.75, 0.25], [0.0, 1.0]], mutual_information=0.5)
        >>> p = Pipeline(model="m", family="mixtral", n_experts=2, top_k=1, layers=[0, 1], prompts=1, tokens=8,
        ...              top1_counts=[[4, 4], [3, 5]], transitions=[t], distinct_paths=3, paths=[])
        >>> [(e.source, e.target, e.weight) for e in pipeline_graph(p, threshold=0.5).edges]
        [('input', 'L0E0', 0.5), ('input', 'L0E1', 0.5), ('L0E0', 'L1E0', 0.75), ('L0E1', 'L1E1', 1.0), ('L1E0', 'output', 0.375), ('L1E1', 'output', 0.625)]
    """  # noqa: E501
    edges: list[Edge] = []
    kept: dict[str, Node] = {}

    def node(layer: int, expert: int) -> str:
        name = f"L{layer}E{expert}"
        if name not in kept:
            kept[name] = Node(id=name, label=name, layer=layer, effect=result.top1_share(layer)[expert])
        return name

    for t in result.transitions:
        for a, row in enumerate(t.probability):
            for b, p in enumerate(row):
                if p >= threshold and t.counts[a][b] >= min_tokens and p > 0:
                    edges.append(Edge(source=node(t.source_layer, a), target=node(t.target_layer, b), weight=p))
    inner = sorted(kept.values(), key=lambda n: (n.layer or 0, n.id))
    layers = sorted({n.layer or 0 for n in inner})
    first = [Edge(source="input", target=n.id, weight=n.effect) for n in inner if layers and n.layer == layers[0]]
    last = [Edge(source=n.id, target="output", weight=n.effect) for n in inner if layers and n.layer == layers[-1]]
    return CircuitGraph(
        title=f"expert pipeline of {result.model}: top-1 transitions with P >= {threshold:g}",
        origin="moe pipeline",
        nodes=[Node(id="input", label="input"), *inner, Node(id="output", label="output")],
        edges=[*first, *edges, *last],
    )


def _matrix(
    values: list[list[float]],
    *,
    rows: list[str],
    columns: list[str],
    x_title: str,
    y_title: str,
    what: str,
    filename: str,
    tip: Callable[[int, int, float], str] | None = None,
) -> str:
    """One probability heatmap on the 0..1 scale, with its legend, as a figure."""
    scale = replace(UNIT, name=what)
    dense = len(columns) > _RASTER_ABOVE
    svg = heatmap(
        values,
        rows=rows,
        columns=columns,
        scale=scale,
        x_title=x_title,
        y_title=y_title,
        cell=22 if not dense else 8,
        cell_width=36 if not dense else 8,
        tip=None if dense else tip,
        text=None if dense else (lambda r, c, v: "" if math.isnan(v) else f"{v:.2f}"),
        raster={} if dense else None,
        label=what,
    )
    return legend(scale) + figure(svg, filename=filename, caption=what[0].upper() + what[1:] + ".")


def render_pipeline_html(result: Pipeline) -> str:
    """Transitions and frequent paths over a corpus as one HTML document (a string); opens offline."""
    experts = [f"E{e}" for e in range(result.n_experts)]
    shares = [result.top1_share(layer) for layer in result.layers]
    sections = [
        (
            "Top-1 share per layer",
            _matrix(
                shares,
                rows=[f"L{layer}" for layer in result.layers],
                columns=experts,
                x_title="expert",
                y_title="MoE layer",
                what="share of tokens whose top-1 expert it is",
                filename="moe-top1-share.svg",
                tip=lambda r, c, v: f"layer {result.layers[r]}, E{c}: {v:.3f} ({result.top1_counts[r][c]} tokens)",
            ),
        )
    ]
    for t in result.transitions:
        used = [sum(row) > 0 for row in t.counts]
        values = [row if used[a] else [math.nan] * len(row) for a, row in enumerate(t.probability)]

        def tip(r: int, c: int, v: float, t: Transition = t) -> str:
            if math.isnan(v):
                return f"E{r} is never top-1 at layer {t.source_layer}"
            return (
                f"L{t.source_layer} E{r} → L{t.target_layer} E{c}: P = {v:.3f} ({t.counts[r][c]} of "
                f"{sum(t.counts[r])} tokens), lift {num(t.lift(r, c))} over independent layers"
            )

        body = _matrix(
            values,
            rows=experts,
            columns=experts,
            x_title=f"top-1 expert at layer {t.target_layer}",
            y_title=f"top-1 expert at layer {t.source_layer}",
            what=f"P(expert at layer {t.target_layer} | expert at layer {t.source_layer})",
            filename=f"moe-transition-{t.source_layer}-{t.target_layer}.svg",
            tip=tip,
        )
        info = (
            f'<p class="legend">Rows sum to 1. Mutual information {t.mutual_information:.4f} nats (0: the two '
            f"layers choose independently; at most ln {result.n_experts} = {math.log(result.n_experts):.3f}).</p>"
        )
        sections.append((f"Layer {t.source_layer} → layer {t.target_layer}", info + body))
    rows: list[list[str | float | int]] = [
        [path_text(p.experts), p.count, p.share, p.independent_share, p.lift, p.markov_share] for p in result.paths
    ]
    explain = (
        f'<p class="legend">{result.distinct_paths} distinct paths of {result.n_experts}^{len(result.layers)} '
        "possible. Independent: the share if every layer chose on its own (product of top-1 shares); lift = "
        "share / independent. Chain: the share the layer-to-layer transitions alone predict.</p>"
    )
    header = ["path", "tokens", "share", "independent", "lift", "chain"]
    sections.append(("Most frequent full paths", explain + table(header, rows, css="paths")))
    return render_page(
        f"mechscope MoE pipelines: {result.model}",
        model=result.model,
        shows=(
            f"How the top-1 experts of {result.tokens} tokens ({result.prompts} prompts) follow each other "
            f"across {len(result.layers)} MoE layers."
        ),
        downloads=download_json(result.model_dump_json(), "moe-pipeline.json", "result JSON"),
        sections=sections,
    )


def render_coactivation_html(result: Coactivation) -> str:
    """Co-activation at one layer as one HTML document (a string); opens offline."""
    experts = [f"E{e}" for e in range(result.n_experts)]
    values = [
        [math.nan if i == j or result.counts[i] == 0 else p for j, p in enumerate(row)]
        for i, row in enumerate(result.probability)
    ]

    def tip(r: int, c: int, v: float) -> str:
        if math.isnan(v):
            return f"E{r}" + (" with itself" if r == c else " is never chosen")
        return (
            f"P(E{c} | E{r}) = {v:.3f} ({result.pair_counts[r][c]} of {result.counts[r]} tokens); "
            f"independent {result.expected[r][c]:.3f}, lift {num(result.lift(r, c))}"
        )

    body = _matrix(
        values,
        rows=experts,
        columns=experts,
        x_title="also chosen: expert j",
        y_title="chosen: expert i",
        what="P(j | i), the share of i's tokens also routed to j",
        filename=f"moe-coactivation-{result.layer}.svg",
        tip=tip,
    )
    note = (
        f'<p class="legend">Every pair of a token\'s top-{result.top_k} experts counts, whatever their ranks; a row '
        f"sums to top_k - 1 = {result.top_k - 1}.</p>"
    )
    pairs: list[list[str | float | int]] = [
        [
            f"E{i} + E{j}",
            result.pair_counts[i][j],
            result.probability[i][j],
            result.probability[j][i],
            result.expected[i][j],
            result.lift(i, j),
        ]
        for i, j in result.top_pairs(20)
    ]
    header = ["pair (i + j)", "tokens", "P(j | i)", "P(i | j)", "independent P(j | i)", "lift"]
    return render_page(
        f"mechscope MoE co-activation: {result.model}, layer {result.layer}",
        model=result.model,
        shows=f"Which experts layer {result.layer} chooses together, over {result.tokens} tokens.",
        downloads=download_json(result.model_dump_json(), "moe-coactivation.json", "result JSON"),
        sections=[("P(j | i)", note + body), ("Most frequent pairs", table(header, pairs, css="pairs"))],
    )


def render_prediction_html(result: RoutingPrediction) -> str:
    """Probe accuracies per (from, to) layer pair as one HTML document (a string); opens offline."""
    sources = sorted({s.from_layer for s in result.scores})
    targets = sorted({s.to_layer for s in result.scores})
    found = {(s.from_layer, s.to_layer): s for s in result.scores}
    values = [[found[(a, b)].accuracy if (a, b) in found else math.nan for b in targets] for a in sources]

    def tip(r: int, c: int, v: float) -> str:
        s = found.get((sources[r], targets[c]))
        if s is None:
            return "not probed"
        return f"resid_pre.{s.from_layer} → layer {s.to_layer}: accuracy {s.accuracy:.3f}, majority {s.majority:.3f}"

    body = _matrix(
        values,
        rows=[f"L{a}" for a in sources],
        columns=[f"L{b}" for b in targets],
        x_title="predicted: top-1 expert at MoE layer",
        y_title="read: resid_pre of layer",
        what="accuracy of the probe on held-out prompts",
        filename="moe-predict.svg",
        tip=tip,
    )
    rows: list[list[str | float | int]] = [
        [s.from_layer, s.to_layer, s.accuracy, s.majority, s.chance, s.train_accuracy] for s in result.scores
    ]
    split = (
        f'<p class="legend">{result.probe}. Split by prompt (seed {result.seed}): {result.train_prompts} training '
        f"prompts ({result.train_tokens} tokens), {result.test_prompts} held out ({result.test_tokens} tokens). "
        "Majority: always the training tokens' most frequent expert.</p>"
    )
    header = ["from layer", "to layer", "accuracy", "majority", "chance", "train accuracy"]
    return render_page(
        f"mechscope MoE routing prediction: {result.model}",
        model=result.model,
        shows="How well a linear probe on the residual stream predicts the top-1 expert of later layers.",
        downloads=download_json(result.model_dump_json(), "moe-predict.json", "result JSON"),
        sections=[("Probe accuracy", split + body), ("Scores", table(header, rows, css="scores"))],
    )
