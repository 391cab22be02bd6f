"""``mechscope steer ...`` and ``mechscope directions ...``: compute direction vectors and steer with them.

Two sub-apps: `steer_app` (generate with a direction added; ``steer sweep``) and `directions_app`
(``directions compute``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json, print_table, visible

if TYPE_CHECKING:
    from mechscope.core.direction import Direction
    from mechscope.core.lm import LanguageModel

steer_app = typer.Typer(help="Steer generation with direction vectors.", invoke_without_command=True)
directions_app = typer.Typer(help="Compute and inspect direction vectors.", no_args_is_help=True)

DirectionOpt = Annotated[Path, typer.Option("--direction", "-d", help="A direction file (.safetensors).")]
LayerOpt = Annotated[int | None, typer.Option("--layer", help="Add at this layer (default: the file's).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Apply a direction computed on another model of the same width anyway.")
]


def _load_direction(path: Path, lm: LanguageModel, layer: int | None, *, force: bool = False) -> Direction:
    """The direction saved at ``path``, checked against ``lm``; ``layer`` (negative from the end) moves it.

    Raises:
        SiteError: ``layer`` is outside the model.
    """
    from mechscope.core.direction import Direction
    from mechscope.core.layers import resolve_layer

    moved = resolve_layer(layer, lm.arch.n_layers) if layer is not None else None  # the cheap check first
    direction = Direction.load(path, lm, force=force)
    if moved is not None:
        direction.layer = moved
    return direction


@steer_app.callback()
@one_line_errors
@model_options
def steer(
    ctx: typer.Context,
    model: ModelOptions,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt(s) to continue.")] = None,
    direction: Annotated[Path | None, typer.Option("--direction", "-d", help="Direction file.")] = None,
    coefficient: Annotated[float, typer.Option("--coefficient", "-c", help="Scale of the added vector.")] = 1.0,
    layer: LayerOpt = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="Use the unit vector times the coefficient.")] = False,
    positions: Annotated[str, typer.Option("--positions", help="all, prompt or generated.")] = "all",
    max_new_tokens: MaxTokensOpt = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for sampling.")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate with a direction added (plain output first, then steered).

    Example: mechscope steer -p "<formal> Tell me about the sea." -d pirate.safetensors -c 4
    """
    if ctx.invoked_subcommand is not None:
        return
    from mechscope.cli.inputs import at_least, finite
    from mechscope.errors import InputError
    from mechscope.steering.generate import generate_with_steering

    if not prompt or direction is None:
        raise InputError("give --prompt and --direction (or use: mechscope steer sweep ...)")
    at_least(max_new_tokens, 1, "--max-new-tokens")
    finite(coefficient, "--coefficient")
    if positions not in ("all", "prompt", "generated"):
        raise InputError(f"unknown --positions '{positions}'; use all, prompt or generated")
    lm = model.load()
    vector = _load_direction(direction, lm, layer, force=force)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    plain = lm.generate(list(prompt), **options)
    phase: Any = positions
    steered = generate_with_steering(
        lm, list(prompt), vector, coefficient, normalize=normalize, positions=phase, seed=seed, **options
    )
    if as_json:
        rows = zip(prompt, plain, steered, strict=True)
        print_json([{"prompt": p, "plain": a, "steered": b} for p, a, b in rows], indent=None)
        return
    for text, before, after in zip(prompt, plain, steered, strict=True):
        console.print(f"[bold]{visible(text)}[/bold]\n  plain:   {visible(before)}\n  steered: {visible(after)}")


@steer_app.command("sweep")
@one_line_errors
@model_options
def steer_sweep(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt(s) to continue.")],
    direction: DirectionOpt,
    model: ModelOptions,
    coefficients: Annotated[str, typer.Option("--coefficients", help="Comma-separated scales.")] = "-8,-4,0,4,8",
    layer: LayerOpt = None,
    max_new_tokens: MaxTokensOpt = 32,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate at several coefficients with one loaded model; a table of outputs.

    Example: mechscope steer sweep -p "<formal> Tell me about the sea." -d pirate.safetensors --coefficients 0,1,2
    """
    from mechscope.cli.inputs import at_least, parse_numbers
    from mechscope.steering.generate import sweep

    scales = parse_numbers(coefficients, "--coefficients")
    at_least(max_new_tokens, 1, "--max-new-tokens")
    lm = model.load()
    result = sweep(
        lm, list(prompt), _load_direction(direction, lm, layer, force=force), scales, max_new_tokens=max_new_tokens
    )
    if as_json:
        print_json(result)
        return
    columns: list[str | Column] = [Column("coefficient", justify="right"), *(visible(text) for text in result.prompts)]
    rows = [[f"{row.coefficient:g}", *(visible(t) for t in row.texts)] for row in result.rows]
    print_table(f"steering sweep at {result.site}", columns, rows)


@directions_app.command("compute")
@one_line_errors
@model_options
def directions_compute(
    positive: Annotated[Path, typer.Option("--positive", help="Prompts with the trait, one per line.")],
    negative: Annotated[Path, typer.Option("--negative", help="Prompts without it, one per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for one direction file per layer.")],
    model: ModelOptions,
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    method: Annotated[
        str, typer.Option("--method", help="diff_of_means or pca (pairs line by line).")
    ] = "diff_of_means",
) -> None:
    """Compute contrast directions per layer and save them, one safetensors file per layer.

    Example: mechscope directions compute --positive pirate.txt --negative formal.txt --layers 1 -o dirs/
    """
    from mechscope.api import tasks
    from mechscope.cli.inputs import read_lines
    from mechscope.core.layers import parse_layers
    from mechscope.errors import InputError

    pos, neg = read_lines(positive, "prompt file"), read_lines(negative, "prompt file")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file; give a folder for the direction files (it is created)")
    if method not in ("diff_of_means", "pca"):
        raise InputError(f"unknown --method '{method}'; use diff_of_means or pca")
    lm = model.load()
    found = tasks.directions(lm, pos, neg, layers=parse_layers(layers, lm.arch.n_layers), method=method)
    out.mkdir(parents=True, exist_ok=True)
    for layer, direction in found.items():
        path = direction.save(out / f"{direction.site}.{layer}.safetensors")
        console.print(f"layer {layer}: norm {float(direction.vector.norm()):.3f} -> {path}")
