"""``mechscope analyze``, ``compare`` and ``tuned-lens``: what a model predicts after every layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table, visible, write_text_output

if TYPE_CHECKING:
    from mechscope.lens.results import Comparison, LensResult

app = typer.Typer()

HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")]


def default_tuned_path(lm: Any) -> Path:
    """Where a model's tuned lens lives by default: next to its weights."""
    return Path(lm.source) / "tuned_lens.safetensors"


@app.command()
@one_line_errors
@model_options
def analyze(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to analyse.")],
    model: ModelOptions,
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens shown per layer.")] = 3,
    track: Annotated[list[str] | None, typer.Option("--track", help="Token to follow through the layers.")] = None,
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    lens_kind: Annotated[str, typer.Option("--lens", help="logit, or tuned (needs a trained tuned lens).")] = "logit",
    tuned_path: Annotated[
        Path | None, typer.Option("--tuned", help="Tuned-lens file (default: tuned_lens.safetensors by the model).")
    ] = None,
    html: HtmlOpt = None,
    log_prob: Annotated[
        bool, typer.Option("--log-prob", help="In the HTML report, plot tracked tokens as log-probabilities.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Use a tuned lens trained on another model of the same shape anyway.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Logit lens: what the model predicts after every layer, at the prompt's last token.

    Example: mechscope analyze -p "The capital of France is" --track " Paris"
    """
    from mechscope.core.layers import parse_layers
    from mechscope.errors import InputError
    from mechscope.lens.logit import LogitLens
    from mechscope.lens.tuned import TunedLens

    check_outputs(html)
    lm = model.load()
    if lens_kind not in ("logit", "tuned"):
        raise InputError(f"unknown --lens '{lens_kind}'; use logit or tuned")
    tuned = TunedLens.load(tuned_path or default_tuned_path(lm), lm, force=force) if lens_kind == "tuned" else None
    lens = LogitLens(lm, tuned)
    chosen = parse_layers(layers, lm.arch.n_layers)
    result = lens.run([prompt], layers=chosen, top_k=top_k, track=track or [])[0]
    if html is not None:
        from mechscope.viz.lens_report import render_lens_html

        grid = lens.grid(prompt, layers=chosen)
        page = render_lens_html(result, grid, model=lm.source, lens=lens_kind, log_prob=log_prob)
        write_text_output(html, page)
    if as_json:
        print_json(result)
        return
    _print_lens(result, f"{lens_kind} lens: {lm.source} ({lm.arch.family}), position {result.position}", top_k)


def _print_lens(result: LensResult, title: str, top_k: int) -> None:
    """The lens table (top tokens per layer, ranks of the tracked tokens) and the prediction line."""
    columns: list[str | Column] = [
        Column("layer", justify="right"),
        "top-1",
        Column("p", justify="right"),
        f"next {top_k - 1}",
    ]
    columns += [Column(f"rank {visible(e.token)}", justify="right") for e in result.token_evolutions]
    rows = [
        [
            str(prediction.layer),
            visible(prediction.top_token),
            f"{prediction.top[0].prob:.3f}",
            "  ".join(f"{visible(t.token)} {t.prob:.2f}" for t in prediction.top[1:]),
            *(str(e.ranks[i]) for e in result.token_evolutions),
        ]
        for i, prediction in enumerate(result.layer_predictions)
    ]
    print_table(title, columns, rows)
    emergence = "never" if result.emergence_layer is None else f"layer {result.emergence_layer}"
    console.print(
        f"prediction: {visible(result.predicted_token)} (p={result.predicted.prob:.3f}); top-1 from {emergence}"
    )


@app.command()
@one_line_errors
@model_options(prefix="model1", default=None)
@model_options(prefix="model2", default=None)
def compare(
    model1: ModelOptions,
    model2: ModelOptions,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text both models read.")],
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two models' layer-by-layer predictions on the same prompt and say where they diverge.

    Example: mechscope compare --model1 toy --model2 ./toy-finetuned -p "The capital of France is"
    """
    from mechscope.lens.compare import compare as compare_models

    check_outputs(html)
    result = compare_models(model1.load(), model2.load(), prompt)
    if html is not None:
        from mechscope.viz.compare_report import render_compare_html

        write_text_output(html, render_compare_html(result))
    if as_json:
        print_json(result)
        return
    _print_comparison(result)


def _print_comparison(result: Comparison) -> None:
    """The layer-by-layer table of a comparison and where the predictions diverge."""
    columns = ("layer 1", "top-1 (model 1)", "layer 2", "top-1 (model 2)", "same", "KL(1||2)")
    rows = [
        [
            str(row.layer_a),
            visible(row.top_a.token),
            str(row.layer_b),
            visible(row.top_b.token),
            "yes" if row.same_top else "[red]no[/red]",
            "" if row.kl_a_to_b is None else f"{row.kl_a_to_b:.3f}",
        ]
        for row in result.layers
    ]
    print_table(f"{result.model_a} vs {result.model_b}", columns, rows)
    if not result.token_level:
        console.print(f"not compared token by token: {result.reason}")
    else:
        where = "nowhere" if result.first_divergence is None else f"first at layer {result.first_divergence}"
        console.print(f"predictions {visible(result.predicted_a)} vs {visible(result.predicted_b)}; diverge {where}")


#: The fewest training documents `tuned-lens` takes: a tenth (at least one) is held out for the report.
MIN_DOCUMENTS = 10


@app.command("tuned-lens")
@one_line_errors
@model_options(default=None)
def tuned_lens(
    model: ModelOptions,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to save (default: by the model).")] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="Training text, one document per line (default: organism corpus).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Train a tuned lens on text and report each layer's KL to the final layer, logit vs tuned lens.

    A tenth of the documents is held out for the report. Without --text, the organisms' own corpus is used.

    Example: mechscope tuned-lens -m toy
    """
    import random

    from mechscope.cli.inputs import at_least, read_lines
    from mechscope.errors import InputError
    from mechscope.lens.tuned import TunedLens, layer_kl

    at_least(steps, 1, "--steps")
    check_outputs(out)
    if text is not None:
        documents = read_lines(text, "training text")
        if len(documents) < MIN_DOCUMENTS:
            raise InputError(
                f"--text '{text}' has {len(documents)} documents; the tuned lens needs at least {MIN_DOCUMENTS} "
                "(a tenth is held out for the report), one per line"
            )
    else:
        from mechscope.zoo.corpus import text_documents

        documents = [d.text for d in text_documents(4242, 2000)]
    lm = model.load()
    random.Random(0).shuffle(documents)
    held_out, train = documents[: len(documents) // 10], documents[len(documents) // 10 :]
    lens = TunedLens.fit(lm, train, steps=steps, progress=not as_json)
    path = lens.save(out or default_tuned_path(lm), model=lm.source)
    logit, tuned = layer_kl(lm, held_out), layer_kl(lm, held_out, lens)
    rows = [{"layer": i, "kl_logit": a, "kl_tuned": b} for i, (a, b) in enumerate(zip(logit, tuned, strict=True))]
    if as_json:
        print_json({"path": str(path), "layers": rows})
        return
    columns = [Column(name, justify="right") for name in ("layer", "logit lens", "tuned lens")]
    cells = [[str(row["layer"]), f"{row['kl_logit']:.3f}", f"{row['kl_tuned']:.3f}"] for row in rows]
    print_table(f"KL to the final layer on {len(held_out)} held-out documents", columns, cells)
    console.print(f"saved {path}")
