"""``mechscope patch`` and ``mechscope ablate``: which components cause a behaviour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.inputs import read_lines
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table, visible, write_text_output

if TYPE_CHECKING:
    from mechscope.causal.results import AblationResult, PatchingResult

app = typer.Typer()


@app.command()
@one_line_errors
@model_options
def patch(
    clean: Annotated[str, typer.Option("--clean", help="Prompt whose behaviour is restored.")],
    corrupted: Annotated[str, typer.Option("--corrupted", help="Prompt of the same token length.")],
    correct: Annotated[str, typer.Option("--correct", help="Answer token of the clean prompt.")],
    wrong: Annotated[str, typer.Option("--wrong", help="Answer token of the corrupted prompt.")],
    model: ModelOptions,
    site: Annotated[str, typer.Option("--site", help="resid_pre, resid_post, attn_out or mlp_out.")] = "resid_post",
    attribution: Annotated[
        bool, typer.Option("--attribution", help="Also run attribution patching and report its correlation.")
    ] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML heatmap.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Activation patching: restore the clean run one (layer, position) at a time; logit-difference metric.

    Example: mechscope patch --clean "The capital of France is" --corrupted "The capital of Japan is"
    --correct " Paris" --wrong " Tokyo"
    """
    from mechscope.api import tasks
    from mechscope.causal import correlation

    check_outputs(html)
    lm = model.load()
    result = tasks.patch(lm, clean, corrupted, correct=correct, wrong=wrong, site=site, progress=not as_json)
    estimate, r = None, None
    if attribution:
        estimate = tasks.attribution(lm, clean, corrupted, correct=correct, wrong=wrong, site=site)
        r = correlation(result.effects, estimate.effects)
    if html is not None:
        from mechscope.viz.patching_report import render_patching_html

        write_text_output(html, render_patching_html(result, model=lm.source))
    if as_json:
        data = json.loads(result.model_dump_json())
        if estimate is not None:
            data["attribution"] = {"effects": estimate.effects, "correlation": r}
        print_json(data)
        return
    _print_patching(result, site)
    if r is not None:
        console.print(f"attribution patching vs activation patching: r = {r:.3f}")


def _print_patching(result: PatchingResult, site: str) -> None:
    """The layers x positions table of patching effects."""
    title = f"{site} patching (0 = corrupted, 1 = clean)" + (" (PARTIAL: interrupted)" if result.partial else "")
    columns: list[str | Column] = ["layer", *(Column(visible(token), justify="right") for token in result.tokens)]
    rows = [[str(layer), *(f"{e:.2f}" for e in row)] for layer, row in zip(result.layers, result.effects, strict=True)]
    print_table(title, columns, rows)


@app.command()
@one_line_errors
@model_options
def ablate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to run with components removed.")],
    model: ModelOptions,
    component: Annotated[str, typer.Option("--component", help="attn, mlp, resid, head or expert.")] = "mlp",
    method: Annotated[str, typer.Option("--method", help="zero, mean or resample.")] = "zero",
    target: Annotated[
        str | None, typer.Option("--target", help="Logit metric: probability of this token at the end.")
    ] = None,
    criterion: Annotated[
        str | None,
        typer.Option("--criterion", help="Text metric on generation: contains:<text>, regex:<re> or function_call."),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Prompts (one per line) whose mean --method mean uses.")
    ] = None,
    resample_from: Annotated[str | None, typer.Option("--resample-from", help="Prompt for --method resample.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated per run.")] = 20,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result JSON (partial on Ctrl-C).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML table.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ablation sweep: knock out each layer's (or head's, or expert's) component and measure the effect.

    Example: mechscope ablate -p "<user> What's the weather in Paris?<assistant>" --component attn
    --criterion function_call
    """
    from mechscope.api import tasks

    check_outputs(out, html)
    lines = read_lines(reference, "reference prompt file") if reference is not None else None
    lm = model.load()
    result = tasks.ablate(
        lm,
        prompt,
        component=component,
        method=method,
        target=target,
        criterion=criterion,
        reference=lines or None,
        resample_from=resample_from,
        max_new_tokens=max_new_tokens,
        progress=not as_json,
    )
    emit_ablation(result, lm.source, out=out, html=html, as_json=as_json)


def emit_ablation(result: AblationResult, model: str, *, out: Path | None, html: Path | None, as_json: bool) -> None:
    """Write a sweep's JSON (``out``) and HTML table (``html``), then print it as JSON or as a table."""
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=2))
    if html is not None:
        from mechscope.viz.ablation_report import render_ablation_html

        write_text_output(html, render_ablation_html(result, model=model))
    if as_json:
        print_json(result)
        return
    _print_ablation(result, logit_metric=result.clean_metric is not None)


def _print_ablation(result: AblationResult, *, logit_metric: bool) -> None:
    """One row per ablated component: the metric and its change, or the criterion and the generated text."""
    title = f"{result.method} ablation of {result.component}" + (" (PARTIAL: interrupted)" if result.partial else "")
    columns = ("layer", "index", "metric" if logit_metric else "criterion", "change" if logit_metric else "text")
    rows = [
        [
            str(effect.layer),
            "" if effect.index is None else str(effect.index),
            *(
                (f"{effect.metric:.4f}", f"{effect.delta:+.4f}")
                if logit_metric
                else (str(effect.criterion), visible(effect.text or ""))
            ),
        ]
        for effect in result.effects
    ]
    print_table(title, columns, rows)
    clean = f"p={result.clean_metric:.4f}" if logit_metric else f"criterion {result.clean_criterion}"
    console.print(f"clean run: {clean}")
