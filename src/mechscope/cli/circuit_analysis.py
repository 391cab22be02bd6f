"""``mechscope circuit analyze|directions|visualize|steer``: read a collected activation set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json, print_table

ActsOpt = Annotated[Path, typer.Option("--activations", "-a", help="Folder written by mechscope circuit collect.")]
LayerOpt = Annotated[int, typer.Option("--layer", "-l", help="The layer (negative counts from the end).")]
MethodOpt = Annotated[str, typer.Option("--method", help="diff_means, probe, lda or pca.")]


def register(app: typer.Typer) -> None:
    """Adds ``analyze``, ``directions``, ``visualize`` and ``steer`` to the ``circuit`` sub-app."""
    app.command("analyze")(analyze_command)
    app.command("directions")(directions_command)
    app.command("visualize")(visualize_command)
    app.command("steer")(steer_command)


def _method(method: str) -> str:
    from mechscope.errors import InputError
    from mechscope.probing.directions import METHODS

    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    return method


@one_line_errors
def analyze_command(
    activations: ActsOpt,
    layer: LayerOpt,
    permutations: Annotated[int, typer.Option("--permutations", help="Label shuffles (control task, p).")] = 20,
    projection: Annotated[str, typer.Option("--projection", help="pca, or umap (the umap extra).")] = "pca",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Geometry (PCA, intrinsic dimension, separation) and held-out probes with baselines at one layer.

    Example: mechscope circuit analyze -a acts/ --layer 2 --json
    """
    from mechscope.probing.analyze import analyze_layer
    from mechscope.probing.store import ActivationSet

    result = analyze_layer(
        ActivationSet(activations), layer, permutations=permutations, seed=seed, projection=projection
    )
    if as_json:
        print_json(result)
        return
    g = result.geometry
    console.print(f"{result.site} of {result.model} on {result.dataset} ({result.n} prompts)")
    console.print(g.summary(), markup=False, highlight=False)
    rows = [
        [
            p.target,
            p.score.method,
            f"{p.score.accuracy:.3f}",
            f"{p.score.majority:.3f}",
            f"{p.score.control_accuracy:.3f}",
            f"{p.score.selectivity:+.3f}",
            f"{p.score.p_value:.2g}",
        ]
        for p in result.probes
    ]
    header = ["reads", "probe", "held-out acc.", "majority", "control", "selectivity", "p"]
    print_table("probes (held out by template)", header, rows)


@one_line_errors
def directions_command(
    activations: ActsOpt,
    layer: LayerOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the directions (one safetensors each).")],
    method: MethodOpt = "diff_means",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Extract the label's direction and one per sub-label, scored on held-out templates, and save them.

    Example: mechscope circuit directions -a acts/ --layer 2 -o directions/ --method diff_means
    """
    from mechscope.cli.output import write_text_output
    from mechscope.errors import InputError
    from mechscope.probing.analyze import layer_directions
    from mechscope.probing.store import ActivationSet

    if out.exists() and not out.is_dir():
        raise InputError(f"'{out}' is a file; give a folder for the directions")
    result, directions = layer_directions(ActivationSet(activations), layer, _method(method), seed)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    for name, direction in directions.items():
        direction.save(out / f"{_file_name(name)}.safetensors")
    write_text_output(out / "directions.json", result.model_dump_json(indent=1) + "\n")
    if as_json:
        print_json(result)
        return
    rows = [
        [
            i.name,
            i.positive,
            i.negative,
            f"{float(directions[i.name].vector.norm()):.3f}",
            f"{i.auc:.3f}",
            f"{i.cohens_d:.2f}",
            f"{i.accuracy:.3f}",
            "yes" if i.held_out else "no",
        ]
        for i in result.items
    ]
    header = ["direction", "positive", "negative", "norm", "AUC", "Cohen's d", "accuracy", "held out"]
    print_table(f"{method} directions at {result.site}", header, rows)
    for name, reason in result.skipped.items():
        console.print(f"skipped {name}: {reason}", markup=False, highlight=False)
    console.print(f"saved {len(directions)} directions to {out}")


def _file_name(name: str) -> str:
    """A safe file name for a direction name (sub-labels are user data)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "direction"


@one_line_errors
def visualize_command(
    activations: ActsOpt,
    html: Annotated[Path, typer.Option("--html", help="Where to write the page.")],
    layer: Annotated[int | None, typer.Option("--layer", "-l", help="One layer (default: the last).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every collected layer.")] = False,
    permutations: Annotated[int, typer.Option("--permutations", help="Label shuffles per probe.")] = 10,
    projection: Annotated[str, typer.Option("--projection", help="pca, or umap (the umap extra).")] = "pca",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """An HTML page: 2-D projections coloured by label, and probe accuracy with its baselines per layer.

    Example: mechscope circuit visualize -a acts/ --layer 2 --all --html viz.html
    """
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.probing.analyze import analyze_layer
    from mechscope.probing.store import ActivationSet
    from mechscope.progress import bar
    from mechscope.viz.probing_report import render_probing_html

    check_outputs(html)
    acts = ActivationSet(activations)
    layers = acts.manifest.layers() if every else [-1 if layer is None else layer]
    analyses = []
    with bar("layers", len(layers)) as shown:
        for index in layers:
            analyses.append(analyze_layer(acts, index, permutations=permutations, seed=seed, projection=projection))
            if shown is not None:
                shown.advance(1)
    write_text_output(html, render_probing_html(analyses, focus=None if layer is None else analyses[0].layer))
    console.print(f"wrote {html} ({len(analyses)} layer(s))")


@one_line_errors
@model_options
def steer_command(
    activations: ActsOpt,
    layer: LayerOpt,
    model: ModelOptions,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeat for several).")],
    coeff: Annotated[float, typer.Option("--coeff", "-c", help="Multiple of the direction to add.")] = 1.0,
    direction: Annotated[str, typer.Option("--direction", help="label, or a sub-label's direction.")] = "label",
    method: MethodOpt = "diff_means",
    target: Annotated[
        str | None, typer.Option("--target", help="Report this token's probability at the last position.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Add a direction found in the activations (coefficient 1 = the classes' separation) and generate.

    Example: mechscope circuit steer -m toy -a acts/ --layer 2 -p "<user> Tell me a joke. <assistant>" -c 1
    """
    import torch

    from mechscope.core import ops
    from mechscope.errors import InputError
    from mechscope.probing.analyze import layer_directions, steering_check
    from mechscope.probing.store import ActivationSet

    acts = ActivationSet(activations)
    _, directions = layer_directions(acts, layer, _method(method))  # type: ignore[arg-type]
    if direction not in directions:
        raise InputError(f"no direction {direction!r}; found: {', '.join(directions)}")
    chosen = directions[direction]
    lm = model.load()
    chosen.check(lm)
    check = steering_check(lm, chosen, prompt, target, (0.0, coeff), direction) if target is not None else None
    with torch.no_grad():
        plain = lm.generate(list(prompt), max_new_tokens=max_new_tokens)
        with lm.intervene({chosen.site_name: ops.add(chosen.vector, coeff)}):
            steered = lm.generate(list(prompt), max_new_tokens=max_new_tokens)
    rows = [{"prompt": p, "plain": a, "steered": b} for p, a, b in zip(prompt, plain, steered, strict=True)]
    if as_json:
        print_json(
            {
                "site": chosen.site_name,
                "direction": direction,
                "coeff": coeff,
                "norm": float(chosen.vector.norm()),
                "generations": rows,
                "check": None if check is None else check.model_dump(),
            }
        )
        return
    for row in rows:
        console.print(f"prompt:  {row['prompt']}", markup=False, highlight=False)
        console.print(f"plain:   {row['plain']}", markup=False, highlight=False)
        console.print(f"steered: {row['steered']}", markup=False, highlight=False)
    if check is not None:
        console.print(
            f"P({target!r}) at the last position: {check.at(0.0):.4g} plain, {check.at(coeff):.4g} with "
            f"{coeff:g} x {direction} at {chosen.site_name} (mean over {check.prompts} prompts)",
            markup=False,
            highlight=False,
        )
