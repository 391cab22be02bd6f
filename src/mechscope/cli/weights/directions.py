"""``mechscope weights directions``: how directions pass through a checkpoint's weights (no model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.options import JsonOpt, ModelOpt, RevisionOpt, one_line_errors
from mechscope.cli.output import console, print_json, print_table

if TYPE_CHECKING:
    from mechscope.weights.directions_results import DirectionsResult


@one_line_errors
def directions_command(
    model: ModelOpt,
    directions: Annotated[
        list[Path],
        typer.Option(
            "--directions",
            "-d",
            help="Directions file(s): Direction (+ .json), \\[k, d_model], or one tensor per layer.",
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
        print_json(result, indent=1)
        return
    _print_directions(result, f"{result.family} minus base" if base else result.family, n_random)
    if out is not None:
        console.print(f"wrote {out}")


def _print_directions(result: DirectionsResult, what: str, n_random: int) -> None:
    """The strongest interactions, and the first note on layers whose MLP could not be read."""
    names = ("layer", "head", "kind", "source", "target", "value", "z")
    columns = [Column(n, justify="right" if n in ("layer", "head", "value", "z") else "left") for n in names]
    rows = [
        [
            str(r.layer),
            "-" if r.head is None else str(r.head),
            r.kind,
            r.source,
            r.target,
            f"{r.value:.4g}",
            f"{r.z:+.2f}",
        ]
        for r in result.top
    ]
    print_table(f"Strongest interactions ({what}; z against {n_random} random directions)", columns, rows)
    notes = [entry.mlp_note for entry in result.layers if entry.mlp_note]
    if notes:
        console.print(f"note: {notes[0]}" + (f" (and {len(notes) - 1} more layers)" if len(notes) > 1 else ""))
