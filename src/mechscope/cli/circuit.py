"""``mechscope circuit export``: circuit graphs from ablation or patching results (no model is loaded).

The probing pipeline's commands (dataset, collect, analyze, directions, visualize, probes, steer) join this
sub-app from `mechscope.cli.circuit_data`, `mechscope.cli.circuit_probes` and `mechscope.cli.circuit_analysis`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import one_line_errors
from mechscope.cli.output import check_outputs, console, err_console, write_text_output

app = typer.Typer(
    help="Circuit graphs from ablation or patching results; labelled prompts, activations, probes and directions.",
    no_args_is_help=True,
)


#: Graph formats by file suffix.
_FORMATS = {
    ".json": "json",
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".html": "html",
    ".htm": "html",
}


@app.command("export")
@one_line_errors
def export(
    source: Annotated[Path, typer.Option("--input", "-i", help="Result JSON from ablate --out or patch --json.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the graph.")],
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="json, dot, mermaid or html (default: from --out's suffix).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Keep components with |effect| at least this.")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", help="Keep at most this many components.")] = None,
) -> None:
    """Build a circuit graph (components with their effect sizes) and export it.

    Example: mechscope circuit export -i ablation.json -o circuit.html -f html
    """
    from mechscope.causal.circuit import build, load_results, to_dot, to_mermaid
    from mechscope.errors import InputError

    check_outputs(out)
    fmt = fmt or _FORMATS.get(out.suffix.lower())
    if fmt not in ("json", "dot", "mermaid", "html"):
        shown = f"format '{fmt}'" if fmt else f"format for '{out.name}'"
        raise InputError(f"unknown {shown}; use -f json|dot|mermaid|html or a .json/.dot/.mmd/.html file name")
    if top is not None and top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    if not source.is_file():
        raise InputError(f"no result file at '{source}'; write one with mechscope ablate --out or patch --json")
    try:
        graph = build(load_results(source.read_text(encoding="utf-8")), threshold=threshold, top=top)
    except ValueError as error:
        raise InputError(f"'{source}' is not an ablation or patching result: {str(error).splitlines()[0]}") from None
    if fmt == "json":
        text = graph.model_dump_json(indent=2)
    elif fmt == "dot":
        text = to_dot(graph)
    elif fmt == "html":
        from mechscope.viz.circuit_report import render_circuit_html

        text = render_circuit_html(graph)
    else:
        text = to_mermaid(graph)
    write_text_output(out, text)
    if len(graph.nodes) == 2:
        err_console.print("note: no component reaches the threshold; the graph is empty (lower --threshold)")
    console.print(f"{len(graph.nodes) - 2} components, {len(graph.edges)} edges -> {out}")
