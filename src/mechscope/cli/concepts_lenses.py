"""``mechscope concepts lenses fit``, ``concepts monitor`` and ``concepts steer``: read and move concepts live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.concepts_readers import DataOpt
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json

lenses_app = typer.Typer(help="Concept lenses: one linear probe per concept, stacked into one matrix.")


def register(app: typer.Typer) -> None:
    """Adds ``lenses fit``, ``monitor`` and ``steer`` to the ``concepts`` sub-app."""
    app.add_typer(lenses_app, name="lenses")
    app.command("monitor")(monitor_command)
    app.command("steer")(steer_command)


@lenses_app.command("fit")
@one_line_errors
@model_options
def fit_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the lenses (safetensors + JSON).")],
    model: ModelOptions,
    layer: Annotated[int, typer.Option("--layer", "-l", help="The layer to read (negative from the end).")] = -1,
    negatives: Annotated[str, typer.Option("--negatives", help="siblings, random, or both (comma-separated).")] = (
        "siblings,random"
    ),
    n_random: Annotated[int, typer.Option("--random", help="Random other concepts per concept.")] = 20,
    neutral: Annotated[
        Path | None, typer.Option("--neutral", help="Neutral texts, one per line, for the 1% thresholds.")
    ] = None,
    fpr: Annotated[float, typer.Option("--fpr", help="False-positive rate on neutral tokens that sets thresholds.")] = (
        0.01
    ),
    as_json: JsonOpt = False,
) -> None:
    """Fit one probe per concept against its siblings and random concepts; thresholds at 1% on neutral text.

    Example: mechscope concepts lenses fit -m MODEL --data enc.h5 --negatives siblings,random -o lenses/
    """
    from mechscope.cli.output import print_table
    from mechscope.concepts.fit import fit_from_encyclopedia

    lm = model.load()
    kinds = {part.strip() for part in negatives.split(",") if part.strip()}
    lenses = fit_from_encyclopedia(
        lm, data, layer, negatives=kinds, n_random=n_random, neutral=neutral, fpr=fpr, progress=not as_json
    )
    lenses.save(out)
    summary = lenses.summary()
    if as_json:
        print_json(summary)
        return
    rows = [[name, str(value)] for name, value in summary.model_dump(exclude={"scores"}).items()]
    print_table(f"{lenses.n_concepts} lenses at {lenses.site} -> {out}", ["field", "value"], rows)


@one_line_errors
@model_options
def monitor_command(
    lenses: Annotated[Path, typer.Option("--lenses", help="Folder written by concepts lenses fit.")],
    model: ModelOptions,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to generate from.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")] = 20,
    top_k: Annotated[int, typer.Option("--top", help="Concepts shown per token.")] = 3,
    only_fired: Annotated[bool, typer.Option("--fired/--all", help="Show only concepts above their threshold.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Generate and show, for every token as it arrives, the concepts its hidden state reads as (live).

    With --json, one JSON object per token (JSON lines), then the generation.

    Example: mechscope concepts monitor -m MODEL --lenses lenses/ -p "Tell me about the river." --json
    """
    from mechscope.cli.output import visible
    from mechscope.concepts.lens_results import MonitorToken
    from mechscope.concepts.lenses import load_lenses
    from mechscope.concepts.monitor import monitor

    loaded = load_lenses(lenses)
    lm = model.load()

    def show(token: MonitorToken) -> None:
        hits = [hit for hit in token.concepts if hit.fires or not only_fired]
        if as_json:
            print(token.model_dump_json(), flush=True)
            return
        names = ", ".join(f"{hit.term} {hit.score:+.2f}" for hit in hits) or "-"
        where = "gen" if token.generated else "prompt"
        console.print(f"{where:>6} {visible(token.token)!s:<16} {names}", markup=False, highlight=False)

    result = monitor(lm, loaded, prompt, max_new_tokens=max_new_tokens, top_k=top_k, on_token=show)
    if as_json:
        print_json({"prompt": result.prompt, "generated": result.generated, "site": result.site}, indent=None)
        return
    console.print(f"generated: {result.generated}", markup=False, highlight=False)


@one_line_errors
@model_options
def steer_command(
    data: DataOpt,
    concept: Annotated[str, typer.Option("--concept", help="The concept id (e.g. dog.n.01).")],
    model: ModelOptions,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeat for several).")],
    layer: Annotated[int, typer.Option("--layer", "-l", help="The layer to add at (negative from the end).")] = -1,
    coeff: Annotated[float, typer.Option("--coeff", "-c", help="Multiple of the direction to add.")] = 4.0,
    lenses: Annotated[
        Path | None, typer.Option("--lenses", help="Steer along the concept's lens instead of its mean.")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Report this token's probability at the last position.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Generate with a concept's direction added (its mean minus the mean of all concepts, or its lens).

    Example: mechscope concepts steer -m MODEL --data enc.h5 --concept dog.n.01 --layer -2 -p "..." -c 4
    """
    from mechscope.concepts.encyclopedia import Encyclopedia
    from mechscope.concepts.steer import concept_direction
    from mechscope.steering.generate import generate_with_steering, probability_shift

    enc = Encyclopedia(data)
    weight = None
    if lenses is not None:
        from mechscope.concepts.lenses import load_lenses

        loaded = load_lenses(lenses)
        weight = loaded.W[:, loaded.index(concept)].numpy()
    direction = concept_direction(enc, concept, layer, lens_weight=weight)
    lm = model.load()
    plain = generate_with_steering(lm, list(prompt), direction, 0.0, max_new_tokens=max_new_tokens)
    steered = generate_with_steering(lm, list(prompt), direction, coeff, max_new_tokens=max_new_tokens)
    shift = probability_shift(lm, list(prompt), direction, coeff, [target]) if target else None
    rows = [{"prompt": p, "plain": a, "steered": b} for p, a, b in zip(prompt, plain, steered, strict=True)]
    if as_json:
        print_json(
            {
                "concept": concept,
                "site": direction.site_name,
                "method": direction.method,
                "coeff": coeff,
                "norm": float(direction.vector.norm()),
                "generations": rows,
                "target_shift": shift,
            }
        )
        return
    for row in rows:
        console.print(f"prompt:  {row['prompt']}", markup=False, highlight=False)
        console.print(f"plain:   {row['plain']}", markup=False, highlight=False)
        console.print(f"steered: {row['steered']}", markup=False, highlight=False)
    if shift:
        console.print(f"P({target!r}) changed by {shift[str(target)]:+.4g} on average", markup=False)
