"""``mechscope``: inspect and change Hugging Face language models from the shell.

Every command prints a table (or ``--json``). Errors caused by input print one line and exit with
status 2; a check that fails exits with status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

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


def main() -> None:
    """Entry point for ``python -m mechscope``."""
    app()
