"""``mechscope attention`` and ``mechscope heads``: where heads look, and which roles they play."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table, visible, write_text_output

app = typer.Typer()


@app.command()
@one_line_errors
@model_options
def attention(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to analyse.")],
    layer: Annotated[int, typer.Option("--layer", help="Layer to show (negative counts from the end).")],
    model: ModelOptions,
    head: Annotated[int | None, typer.Option("--head", help="One head (default: the mean over heads).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Focus: weights above this are listed.")] = 0.3,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a layer's heads look: focus edges, entropy and sink mass per head, and an optional heatmap.

    Example: mechscope attention -p "The capital of France is" --layer 1 --html att.html
    """
    from mechscope.attention.summary import layer_attention

    check_outputs(html)
    lm = model.load()
    result = layer_attention(lm, prompt, layer, head=head, threshold=threshold, with_roles=html is not None)
    if html is not None:
        from mechscope.viz.attention_report import render_attention_html

        write_text_output(html, render_attention_html(result, title=f"mechscope attention: {lm.source}"))
    at = result.layer
    if as_json:
        focus = [edge.model_dump() for edge in result.focus]
        print_json({"layer": at, "focus": focus, "entropy": result.entropy[at], "sink_mass": result.sink_mass[at]})
        return
    rows = [
        [str(e.head), f"{e.query} {visible(e.query_token)}", f"{e.key} {visible(e.key_token)}", f"{e.weight:.3f}"]
        for e in result.focus
    ]
    print_table(f"layer {at}: attention weights above {threshold}", ("head", "query", "key", "weight"), rows)
    console.print(
        "  ".join(
            f"H{h}: entropy {e:.2f}, sink {s:.2f}"
            for h, (e, s) in enumerate(zip(result.entropy[at], result.sink_mass[at], strict=True))
        )
    )


@app.command()
@one_line_errors
@model_options
def heads(
    model: ModelOptions,
    top: Annotated[int, typer.Option("--top", help="Heads listed per role.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Score every head for previous-token, duplicate-token, induction and copying roles; list the best.

    Example: mechscope heads -m toy --top 3
    """
    from mechscope.attention.roles import ROLES, head_roles
    from mechscope.cli.inputs import at_least

    at_least(top, 1, "--top")
    roles = head_roles(model.load())
    if as_json:
        print_json(roles)
        return
    rows = [
        [role, "  ".join(f"{layer}.{h}: {score:.2f}" for layer, h, score in roles.top(role, top)) or "n/a"]
        for role in ROLES
    ]
    print_table("top heads per role (score in [0, 1])", ("role", "layer.head: score"), rows)
