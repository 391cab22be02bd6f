"""Circuit graphs: the components that matter, from ablation or patching results, as JSON, DOT or Mermaid.

A graph is layered: an ``input`` node, the kept components in layer order, and an ``output`` node. Nodes
carry their effect size; edges join each kept component to the kept components of the next layer that
holds any (and, for patching cells, only to positions at or after its own, the direction information flows
in a causal model). Components are kept when ``|effect| >= threshold``, at most ``top`` of them.

JSON (`CircuitGraph.model_dump_json`) is the canonical form; DOT renders with Graphviz's ``dot`` and
Mermaid as a flowchart. The HTML view is in `mechscope.viz.circuit_report`.
"""

from __future__ import annotations

import itertools

from mechscope.causal.results import AblationResult, CircuitGraph, Edge, Node, PatchingResult


def _keep(candidates: list[Node], threshold: float, top: int | None) -> list[Node]:
    kept = sorted((n for n in candidates if abs(n.effect) >= threshold), key=lambda n: -abs(n.effect))
    if top is not None:
        kept = kept[:top]
    return sorted(kept, key=lambda n: (n.layer or 0, n.position or 0, n.id))


def _connect(kept: list[Node], causal_positions: bool) -> CircuitGraph:
    source, sink = Node(id="input", label="input"), Node(id="output", label="output")
    layers = sorted({n.layer for n in kept if n.layer is not None})
    by_layer = {layer: [n for n in kept if n.layer == layer] for layer in layers}
    edges: list[Edge] = []
    first = by_layer[layers[0]] if layers else []
    last = by_layer[layers[-1]] if layers else []
    edges += [Edge(source="input", target=n.id, weight=abs(n.effect)) for n in first]
    for here, there in itertools.pairwise(layers):
        for a in by_layer[here]:
            for b in by_layer[there]:
                if causal_positions and a.position is not None and b.position is not None and b.position < a.position:
                    continue
                edges.append(Edge(source=a.id, target=b.id, weight=min(abs(a.effect), abs(b.effect))))
    edges += [Edge(source=n.id, target="output", weight=abs(n.effect)) for n in last]
    return CircuitGraph(title="", origin="", nodes=[source, *kept, sink], edges=edges)


def from_ablation(result: AblationResult, *, threshold: float = 0.1, top: int | None = None) -> CircuitGraph:
    """Components whose ablation changes the metric by at least ``threshold`` (needs a logit metric)."""
    candidates = []
    for e in result.effects:
        if e.delta is None:
            continue
        name = f"{e.component} L{e.layer}" + ("" if e.index is None else f".{e.index}")
        node_id = f"{e.component}_{e.layer}" + ("" if e.index is None else f"_{e.index}")
        candidates.append(Node(id=node_id, label=name, layer=e.layer, effect=e.delta))
    graph = _connect(_keep(candidates, threshold, top), causal_positions=False)
    graph.title = f"{result.method} ablation of {result.component}: {result.prompt}"
    graph.origin = "ablation"
    return graph


def from_patching(result: PatchingResult, *, threshold: float = 0.3, top: int | None = 20) -> CircuitGraph:
    """(layer, position) cells whose patching restores at least ``threshold`` of the clean behaviour."""
    candidates = [
        Node(
            id=f"L{layer}_P{position}",
            label=f"{result.site}.{layer} @ {result.tokens[position]}",
            layer=layer,
            position=position,
            effect=effect,
        )
        for layer, row in zip(result.layers, result.effects, strict=True)
        for position, effect in enumerate(row)
    ]
    graph = _connect(_keep(candidates, threshold, top), causal_positions=True)
    graph.title = f"{result.site} patching: {result.clean_prompt} / {result.corrupted_prompt}"
    graph.origin = "patching"
    return graph


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: CircuitGraph) -> str:
    """Graphviz DOT: ``dot -Tsvg circuit.dot -o circuit.svg``."""
    lines = ["digraph circuit {", "  rankdir=LR;", f"  label={_dot_quote(graph.title)};", "  node [shape=box];"]
    for node in graph.nodes:
        label = node.label if node.id in ("input", "output") else f"{node.label}\n{node.effect:+.3f}"
        lines.append(f"  {_dot_quote(node.id)} [label={_dot_quote(label)}];")
    for edge in graph.edges:
        width = 1.0 + 4.0 * min(1.0, edge.weight)
        lines.append(f"  {_dot_quote(edge.source)} -> {_dot_quote(edge.target)} [penwidth={width:.2f}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    # Mermaid labels sit in double quotes; entity codes keep quotes and angle brackets literal.
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;").replace("\n", " ")


def to_mermaid(graph: CircuitGraph) -> str:
    """A Mermaid flowchart (left to right)."""
    ids = {node.id: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for node in graph.nodes:
        label = node.label if node.id in ("input", "output") else f"{node.label} ({node.effect:+.3f})"
        lines.append(f'    {ids[node.id]}["{_mermaid_label(label)}"]')
    lines += [f"    {ids[edge.source]} --> {ids[edge.target]}" for edge in graph.edges]
    return "\n".join(lines) + "\n"


def load_results(text: str) -> AblationResult | PatchingResult:
    """Parse a saved ablation or patching result (JSON written by ``--out`` / ``--json``)."""
    import json

    data = json.loads(text)
    if "site" in data and "corrupted_prompt" in data:
        return PatchingResult.model_validate(data)
    return AblationResult.model_validate(data)


def build(
    result: AblationResult | PatchingResult, *, threshold: float | None = None, top: int | None = None
) -> CircuitGraph:
    """The circuit graph of either kind of result (default thresholds: 0.1 for ablation, 0.3 for patching)."""
    if isinstance(result, PatchingResult):
        return from_patching(result, threshold=0.3 if threshold is None else threshold, top=top or 20)
    return from_ablation(result, threshold=0.1 if threshold is None else threshold, top=top)
