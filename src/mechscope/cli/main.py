"""``mechscope``: inspect and change Hugging Face language models from the shell.

Every command prints a table (or ``--json``). Errors caused by input print one line and exit with
status 2; a check that fails exits with status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mechscope.cli.options import (
    AttnOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    RemoteCodeOpt,
    RevisionOpt,
)
from mechscope.errors import MechscopeError

app = typer.Typer(
    name="mechscope",
    help="Look inside any Hugging Face language model and change it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn a `MechscopeError` into one line on stderr and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MechscopeError as error:
            print(f"mechscope: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@one_line_errors
def models(as_json: JsonOpt = False) -> None:
    """List supported model families and bundled organisms.

    Example: mechscope models --json
    """
    from mechscope.models.archmap import FAMILIES
    from mechscope.models.registry import list_organisms

    families = [{"model_type": name, "kind": spec.kind, "note": spec.note} for name, spec in FAMILIES.items()]
    organisms = [{"name": o.name, "path": str(o.path), "summary": o.summary} for o in list_organisms()]
    if as_json:
        print(json.dumps({"families": families, "organisms": organisms}, indent=2))
        return
    table = Table(title="Supported families")
    for column in ("model_type", "kind", "note"):
        table.add_column(column)
    for row in families:
        table.add_row(row["model_type"], row["kind"], row["note"])
    console.print(table)
    listing = Table(title="Bundled organisms (load by name)")
    listing.add_column("name")
    listing.add_column("summary")
    for org in organisms:
        listing.add_row(org["name"], org["summary"])
    if not organisms:
        listing.add_row("(none installed)", "")
    console.print(listing)


@app.command()
@one_line_errors
def doctor(
    model: ModelOpt,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    attn: AttnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that every hook fires and captures match transformers exactly on MODEL.

    Exits 1 if any check fails. Run it before trusting mechscope on a new architecture.

    Example: mechscope doctor -m ./my-model --json
    """
    import mechscope as ms
    from mechscope.checks.doctor import run_doctor

    lm = ms.load(
        model,
        dtype=dtype,
        device=device,
        device_map=device_map,
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn,
    )
    report = run_doctor(lm)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        table = Table(title=f"mechscope doctor: {report.model} ({report.family})")
        for column in ("check", "result", "detail"):
            table.add_column(column)
        for check in report.checks:
            mark = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]"
            table.add_row(check.name, mark, check.detail)
        console.print(table)
    if not report.passed:
        raise typer.Exit(1)


def visible(token: str) -> str:
    """A token with its whitespace made visible (tokens are user data: rich markup is escaped)."""
    from rich.markup import escape

    return escape(token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥"))


@app.command()
@one_line_errors
def analyze(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to analyse.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens shown per layer.")] = 3,
    track: Annotated[list[str] | None, typer.Option("--track", help="Token to follow through the layers.")] = None,
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Logit lens: what the model predicts after every layer, at the prompt's last token.

    Example: mechscope analyze -p "The capital of France is" --track " Paris"
    """
    import mechscope as ms
    from mechscope.lens.logit import LogitLens
    from mechscope.lens.strategy import parse_layers

    lm = ms.load(model, dtype=dtype, device=device)
    lens = LogitLens(lm)
    result = lens.run([prompt], layers=parse_layers(layers, lm.arch.n_layers), top_k=top_k, track=track or [])[0]
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    table = Table(title=f"logit lens: {lm.source} ({lm.arch.family}), position {result.position}")
    table.add_column("layer", justify="right")
    table.add_column("top-1")
    table.add_column("p", justify="right")
    table.add_column(f"next {top_k - 1}")
    for evolution in result.token_evolutions:
        table.add_column(f"rank {visible(evolution.token)}", justify="right")
    for i, prediction in enumerate(result.layer_predictions):
        others = "  ".join(f"{visible(t.token)} {t.prob:.2f}" for t in prediction.top[1:])
        ranks = [str(e.ranks[i]) for e in result.token_evolutions]
        table.add_row(
            str(prediction.layer), visible(prediction.top_token), f"{prediction.top[0].prob:.3f}", others, *ranks
        )
    console.print(table)
    emergence = "never" if result.emergence_layer is None else f"layer {result.emergence_layer}"
    console.print(
        f"prediction: {visible(result.predicted_token)} (p={result.predicted.prob:.3f}); top-1 from {emergence}"
    )


def main() -> None:
    """Entry point for ``python -m mechscope``."""
    app()
