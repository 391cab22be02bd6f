"""``mechscope moe pipeline|coactivation|predict``: how routing runs through the layers of an MoE model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.moe.basics import DEFAULT_MODEL
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_line, print_table, write_text_output
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.moe.path_results import Coactivation, Pipeline, RoutingPrediction

PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")]
PromptOpt = Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write an HTML page.")]

#: Graph formats by file suffix (``.md``: a Mermaid block in Markdown).
GRAPH_FORMATS = {
    ".json": "json",
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".md": "markdown",
    ".html": "html",
    ".htm": "html",
}


def register(app: typer.Typer) -> None:
    """Adds ``pipeline``, ``coactivation`` and ``predict`` to ``app``."""
    for name, command in (("pipeline", pipeline), ("coactivation", coactivation), ("predict", predict)):
        app.command(name)(one_line_errors(model_options(default=DEFAULT_MODEL)(command)))


def graph_format(path: Path) -> str:
    """The graph format of ``--graph``'s file name.

    Raises:
        InputError: the suffix is not one of `GRAPH_FORMATS`.
    """
    fmt = GRAPH_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unknown graph format for '{path.name}'; name it .dot, .mmd, .md, .json or .html")
    return fmt


def pipeline(
    model: ModelOptions,
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    batch_size: BatchOpt = 32,
    top_paths: Annotated[int, typer.Option("--top-paths", help="How many of the most frequent paths.")] = 10,
    out: OutOpt = None,
    html: HtmlOpt = None,
    graph: Annotated[
        Path | None, typer.Option("--graph", help="Also write the pipeline graph: .dot, .mmd, .md, .json or .html.")
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Graph edges: transitions with P(next | expert) at least this.")
    ] = 0.3,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 expert transitions between consecutive MoE layers and the most frequent full paths.

    Example: mechscope moe pipeline --prompts corpus.txt --graph pipeline.dot --html pipeline.html
    """
    from mechscope.cli.inputs import at_least, finite, read_corpus
    from mechscope.moe.pipeline import pipeline as count_paths

    check_outputs(out, html, graph)
    at_least(batch_size, 1, "--batch-size")
    at_least(top_paths, 1, "--top-paths")
    if not 0 <= finite(threshold, "--threshold") <= 1:
        raise InputError(f"--threshold is a probability in [0, 1], got {threshold}")
    fmt = graph_format(graph) if graph is not None else None
    corpus = read_corpus(prompts, prompt)
    result = count_paths(model.load(), corpus, batch_size=batch_size, top_paths=top_paths, progress=not as_json)
    written = _write(result, out, html)
    if graph is not None and fmt is not None:
        write_text_output(graph, _graph_text(result, fmt, threshold))
        written.append(graph)
    if as_json:
        print_json(result)
        return
    _print_pipeline(result)
    for path in written:
        print_line(f"wrote {path}")


def coactivation(
    model: ModelOptions,
    layer: Annotated[int, typer.Option("--layer", help="The MoE layer (negative counts from the end).")],
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    batch_size: BatchOpt = 32,
    top: Annotated[int, typer.Option("--top", help="How many of the most frequent pairs to list.")] = 10,
    out: OutOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """P(j | i) at one MoE layer over every pair of experts chosen for the same token, against chance.

    Example: mechscope moe coactivation --layer 1 --prompts corpus.txt --html coactivation.html
    """
    from mechscope.cli.inputs import at_least, read_corpus
    from mechscope.moe.coactivation import coactivation as count_pairs

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    at_least(top, 1, "--top")
    corpus = read_corpus(prompts, prompt)
    result = count_pairs(model.load(), corpus, layer=layer, batch_size=batch_size, progress=not as_json)
    written = _write(result, out, html)
    if as_json:
        print_json(result)
        return
    _print_coactivation(result, top)
    for path in written:
        print_line(f"wrote {path}")


def predict(
    model: ModelOptions,
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    from_layer: Annotated[
        list[int] | None, typer.Option("--from-layer", help="Read resid_pre of this layer (repeat; default all).")
    ] = None,
    to_layer: Annotated[
        list[int] | None,
        typer.Option("--to-layer", help="Predict this MoE layer's top-1 expert (repeat; default all)."),
    ] = None,
    test_share: Annotated[float, typer.Option("--test-share", help="Share of prompts held out for testing.")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/test split of the prompts.")] = 0,
    max_examples: Annotated[
        int, typer.Option("--max-examples", help="Take prompts until this many tokens are collected.")
    ] = 20_000,
    batch_size: BatchOpt = 32,
    out: OutOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How well a linear probe on a layer's input residual predicts later layers' top-1 experts.

    Example: mechscope moe predict --prompts corpus.txt --from-layer 0 --to-layer 3
    """
    from mechscope.cli.inputs import at_least, read_corpus
    from mechscope.moe.predict import predict as fit_probes

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    at_least(max_examples, 1, "--max-examples")
    corpus = read_corpus(prompts, prompt)
    result = fit_probes(
        model.load(),
        corpus,
        from_layers=from_layer or None,
        to_layers=to_layer or None,
        test_share=test_share,
        seed=seed,
        batch_size=batch_size,
        max_examples=max_examples,
        progress=not as_json,
    )
    written = _write(result, out, html)
    if as_json:
        print_json(result)
        return
    _print_prediction(result)
    for path in written:
        print_line(f"wrote {path}")


def _write(result: Pipeline | Coactivation | RoutingPrediction, out: Path | None, html: Path | None) -> list[Path]:
    """Write ``--out`` (the JSON) and ``--html`` (the page of the result's kind); the paths written."""
    from mechscope.moe.path_results import Coactivation, Pipeline
    from mechscope.viz import moe_paths_report as report

    written = []
    if out is not None:
        written.append(write_text_output(out, result.model_dump_json(indent=2)))
    if html is not None:
        if isinstance(result, Pipeline):
            page = report.render_pipeline_html(result)
        elif isinstance(result, Coactivation):
            page = report.render_coactivation_html(result)
        else:
            page = report.render_prediction_html(result)
        written.append(write_text_output(html, page))
    return written


def _graph_text(result: Pipeline, fmt: str, threshold: float) -> str:
    """The pipeline graph through the circuit exports (`mechscope.causal.circuit`)."""
    from mechscope.causal.circuit import to_dot, to_mermaid
    from mechscope.viz.moe_paths_report import pipeline_graph

    graph = pipeline_graph(result, threshold=threshold)
    if fmt == "json":
        return graph.model_dump_json(indent=2)
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "html":
        from mechscope.viz.circuit_report import render_circuit_html

        return render_circuit_html(graph)
    if fmt == "markdown":
        return f"# {graph.title}\n\n```mermaid\n{to_mermaid(graph)}```\n"
    return to_mermaid(graph)


def _print_pipeline(result: Pipeline) -> None:
    """Per transition its mutual information and strongest moves; then the most frequent paths."""
    from mechscope.viz.moe_paths_report import path_text

    rows = []
    for t in result.transitions:
        moves = sorted(
            ((a, b) for a in range(result.n_experts) for b in range(result.n_experts) if t.counts[a][b]),
            key=lambda ab: (-t.counts[ab[0]][ab[1]], ab),
        )[:3]
        shown = ", ".join(f"E{a}→E{b} {t.probability[a][b]:.2f} (×{t.lift(a, b):.1f})" for a, b in moves)
        rows.append([f"{t.source_layer} → {t.target_layer}", f"{t.mutual_information:.4f}", shown])
    columns: list[str | Column] = [
        "layers",
        Column("MI (nats)", justify="right"),
        "most frequent: P(next | expert) (lift)",
    ]
    print_table(f"top-1 transitions ({result.tokens} tokens, {result.prompts} prompts)", columns, rows)
    paths = [
        [path_text(p.experts), str(p.count), f"{p.share:.4f}", f"{p.independent_share:.4f}", f"{p.lift:.2f}"]
        for p in result.paths
    ]
    columns = ["path", *(Column(name, justify="right") for name in ("tokens", "share", "independent", "lift"))]
    print_table(f"most frequent full paths ({result.distinct_paths} distinct)", columns, paths)
    console.print("independent = the share if each layer chose on its own (product of top-1 shares); lift = share / it")


def _print_coactivation(result: Coactivation, top: int) -> None:
    rows = [
        [
            f"E{i} + E{j}",
            str(result.pair_counts[i][j]),
            f"{result.probability[i][j]:.3f}",
            f"{result.probability[j][i]:.3f}",
            f"{result.expected[i][j]:.3f}",
            f"{result.lift(i, j):.2f}",
        ]
        for i, j in result.top_pairs(top)
    ]
    names = ("tokens", "P(j | i)", "P(i | j)", "independent", "lift")
    columns: list[str | Column] = ["pair i + j", *(Column(name, justify="right") for name in names)]
    title = f"co-activation at layer {result.layer} (top-{result.top_k}, {result.tokens} tokens)"
    print_table(title, columns, rows)
    console.print(f"every pair of a token's top-{result.top_k} experts counts; a row of P(j | i) sums to top_k - 1")


def _print_prediction(result: RoutingPrediction) -> None:
    rows = [
        [
            str(s.from_layer),
            str(s.to_layer),
            f"{s.accuracy:.3f}",
            f"{s.majority:.3f}",
            f"{s.chance:.3f}",
            f"{s.train_accuracy:.3f}" + ("" if s.converged else " (not converged)"),
        ]
        for s in result.scores
    ]
    names = ("from layer", "to layer", "accuracy", "majority", "chance", "train acc.")
    title = (
        f"routing prediction from resid_pre ({result.train_prompts} training / {result.test_prompts} held-out "
        f"prompts, {result.test_tokens} test tokens)"
    )
    print_table(title, [Column(name, justify="right") for name in names], rows)
    if result.capped:
        console.print(f"note: only the first {result.prompts} prompts ran (--max-examples {result.max_examples})")
