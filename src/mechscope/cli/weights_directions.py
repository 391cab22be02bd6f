"""``mechscope weights directions``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOpt, RevisionOpt, one_line_errors
from mechscope.cli.weights import weights_app


@weights_app.command("directions")
@one_line_errors
def directions(
    model: ModelOpt,
    directions: Annotated[
        list[Path],
        typer.Option(
            "--directions", "-d", help="Directions file(s): Direction (+ .json), [k, d_model], or one tensor per layer."
        ),
    ],
    layers: Annotated[
        str | None, typer.Option("--layers", help="all, 10-20, 0,3,-1 ... (default: the file's layers, else all).")
    ] = None,
    n_random: Annotated[int, typer.Option("--random", help="Random directions in the z-score baseline.")] = 100,
    base: Annotated[str | None, typer.Option("--base", help="Base checkpoint: analyse model minus base.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the full result as JSON.")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows of the top-interactions table.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random directions.")] = 0,
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep the directions' norms.")] = False,
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """QK affinity, OV projection and MLP response of directions, read from the weights, with z-scores.

    Example: mechscope weights directions -m org/model -d dirs.safetensors --layers 10-20 --out qk_vo.json
    """
    from rich.console import Console
    from rich.table import Table

    from mechscope.weights.directions import directions_through_weights

    result = directions_through_weights(
        model,
        directions,
        layers=layers,
        base=base,
        n_random=n_random,
        seed=seed,
        normalize=not no_normalize,
        top=top,
        revision=revision,
    )
    if out is not None:
        result.save(out)
    if as_json:
        print(result.model_dump_json(indent=1))
        return
    what = f"{result.family} minus base" if base else result.family
    table = Table(title=f"Strongest interactions ({what}; z against {n_random} random directions)")
    for column in ("layer", "head", "kind", "source", "target", "value", "z"):
        table.add_column(column, justify="right" if column in ("layer", "head", "value", "z") else "left")
    for row in result.top:
        head = "-" if row.head is None else str(row.head)
        table.add_row(str(row.layer), head, row.kind, row.source, row.target, f"{row.value:.4g}", f"{row.z:+.2f}")
    console = Console()
    console.print(table)
    notes = [entry.mlp_note for entry in result.layers if entry.mlp_note]
    if notes:
        console.print(f"note: {notes[0]}" + (f" (and {len(notes) - 1} more layers)" if len(notes) > 1 else ""))
    if out is not None:
        console.print(f"wrote {out}")
