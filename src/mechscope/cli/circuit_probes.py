"""``mechscope circuit probes run|init``: a probe battery over every layer, and its stratigraphy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import (
    AddressOpt,
    BackendOpt,
    JsonOpt,
    ModelOptions,
    WorkersOpt,
    model_options,
    one_line_errors,
)
from mechscope.cli.output import console, print_json, print_table

probes_app = typer.Typer(help="Probe batteries: which property is readable at which layer.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Adds ``probes`` to the ``circuit`` sub-app."""
    app.add_typer(probes_app, name="probes")


def _layer(value: int | None) -> str:
    return "never" if value is None else str(value)


@probes_app.command("run")
@one_line_errors
@model_options
def probes_run(
    model: ModelOptions,
    battery: Annotated[str, typer.Option("--battery", "-b", help="default, or a battery YAML file.")] = "default",
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    positions: Annotated[str, typer.Option("--positions", help="last or mean.")] = "last",
    method: Annotated[str, typer.Option("--method", help="logistic or diff_means.")] = "logistic",
    permutations: Annotated[int, typer.Option("--permutations", help="Label shuffles per probe (control, p).")] = 20,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Template resamples for emergence intervals.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds, shuffles and resamples.")] = 0,
    activations: Annotated[
        Path | None, typer.Option("--activations", help="Keep the collected activations in this folder (resumable).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result JSON here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the heatmap and stratigraphy page.")] = None,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe every property of a battery at every layer; print the stratigraphy.

    With --backend ray, Ray workers make the prompts and collect the activations (in shards); the probes are
    fitted here. The result is the same on either backend.

    Example: mechscope circuit probes run -m toy --battery default --html strata.html
    Example: mechscope circuit probes run -m MODEL --backend ray --workers 4 --activations acts/
    """
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.errors import InputError
    from mechscope.probing.battery import load_battery, model_layers, run_battery

    if method not in ("logistic", "diff_means"):
        raise InputError(f"--method must be logistic or diff_means, not {method!r}")
    spec = load_battery(battery)
    check_outputs(out, html)
    with model.runner(backend, address=address, workers=workers) as runner:
        result = run_battery(
            None, spec, layers=runner.call(model_layers, layers), positions=positions,
            method=method,  # type: ignore[arg-type]
            permutations=permutations, bootstrap=bootstrap, seed=seed, activations=activations,
            progress=not as_json, runner=runner,
        )  # fmt: skip
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=1) + "\n")
    if html is not None:
        from mechscope.viz.probe_battery_report import render_battery_html

        write_text_output(html, render_battery_html(result))
    if as_json:
        print_json({**json.loads(result.model_dump_json()), "backend": backend})  # pydantic's rules for NaN
        return
    rows = []
    for row in result.stratigraphy():
        p = result.property(str(row["property"]))
        peak = p.at(p.peak)
        rows.append(
            [
                p.category,
                p.name,
                _layer(p.emergence),
                f"{_layer(p.emergence_low)}-{_layer(p.emergence_high)}" if p.emergence_low is not None else "-",
                str(p.peak),
                f"{p.peak_accuracy:.3f}",
                f"{peak.majority:.3f}",
                f"{peak.selectivity:+.3f}",
                _layer(p.destruction) if p.emergence is not None else "-",
            ]
        )
    header = ["category", "property", "emerges", "95% CI", "peak", "accuracy", "majority", "selectivity", "destroyed"]
    print_table(f"stratigraphy of {result.model} ({result.prompts} prompts)", header, rows)
    console.print(
        f"emerges: first layer with held-out accuracy >= {result.threshold} and > majority + {result.margin}; "
        f"destroyed: first later layer < {result.destroyed_below}"
    )


@probes_app.command("init")
@one_line_errors
def probes_init(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the battery template (YAML).")],
) -> None:
    """Write the default battery as a commented YAML template to extend.

    Example: mechscope circuit probes init -o battery.yaml
    """
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.probing.battery import DEFAULT_BATTERY

    check_outputs(out)
    write_text_output(out, DEFAULT_BATTERY)
    console.print(f"wrote the default battery to {out}; run it with mechscope circuit probes run -b {out}")
