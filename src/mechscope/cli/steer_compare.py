"""``mechscope steer compare``: a trained steering vector next to the difference-of-means vector (issue 18)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json, print_table


def register(app: typer.Typer) -> None:
    """Adds ``compare`` to the ``steer`` sub-app."""
    app.command("compare")(steer_compare)


@one_line_errors
@model_options
def steer_compare(
    trained: Annotated[Path, typer.Option("--trained", help="Run folder of the trained vector (steer train -o).")],
    positive: Annotated[Path, typer.Option("--positive", help="Prompts with the trait, one per line.")],
    negative: Annotated[Path, typer.Option("--negative", help="Prompts without it, one per line.")],
    model: ModelOptions,
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    data: Annotated[
        Path | None, typer.Option("--data", help="The run's training data (default: the path its config records).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the per-layer Parquet table.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML summary.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cosine and norms per layer, and validation perplexities, of a trained vector vs the difference of means.

    Example: mechscope steer compare -m toy --trained runs/pirate/ --positive pos.txt --negative neg.txt --data d.jsonl
    """
    from mechscope.cli.inputs import read_lines
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.core.layers import parse_layers
    from mechscope.errors import InputError
    from mechscope.steering.comparison import compare_vectors
    from mechscope.steering.vector import SteeringVector

    if not trained.is_dir():
        raise InputError(f"no run folder at '{trained}'; give the folder 'steer train -o' wrote")
    pos, neg = read_lines(positive, "positive prompt file"), read_lines(negative, "negative prompt file")
    for name, lines in (("positive", pos), ("negative", neg)):
        if not lines:
            raise InputError(f"the {name} prompt file has no prompts; give one prompt per line")
    if data is not None and not data.is_file():
        raise InputError(f"no data file at '{data}'")
    check_outputs(out, html)
    lm = model.load()
    vector = SteeringVector.from_pretrained(trained, lm)
    result = compare_vectors(lm, vector, pos, neg, layers=parse_layers(layers, lm.arch.n_layers), data=data)
    if out is not None:
        result.to_parquet(out)
    if html is not None:
        from mechscope.viz.steer_compare_report import render_steer_compare_html

        write_text_output(html, render_steer_compare_html(result))
    if as_json:
        print_json(result)
        return
    rows = [
        [str(r.layer) + (" *" if r.trained_layer else ""), f"{r.cosine:.3f}", f"{r.diff_norm:.3f}"]
        for r in result.layers
    ]
    print_table("trained vector vs difference of means (* trained layer)", ["layer", "cosine", "|diff|"], rows)

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    console.print(
        f"trained norm {result.trained_norm:.3f}; val ppl: vanilla {show(result.vanilla_ppl)}, trained "
        f"{show(result.trained_ppl)}, diff of means {show(result.diff_ppl)} (own norm), "
        f"{show(result.diff_rescaled_ppl)} (rescaled to the trained norm)"
    )
