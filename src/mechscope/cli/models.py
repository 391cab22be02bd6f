"""``mechscope models`` and ``mechscope doctor``: what mechscope supports, and whether it works on a model."""

from __future__ import annotations

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import print_json, print_table

app = typer.Typer()


@app.command()
@one_line_errors
def models(as_json: JsonOpt = False) -> None:
    """List supported model families and bundled organisms.

    Example: mechscope models --json
    """
    from mechscope.models.families import FAMILIES
    from mechscope.models.registry import list_organisms

    families = [{"model_type": name, "kind": spec.kind, "note": spec.note} for name, spec in FAMILIES.items()]
    organisms = [{"name": o.name, "path": str(o.path), "summary": o.summary} for o in list_organisms()]
    if as_json:
        print_json({"families": families, "organisms": organisms})
        return
    columns = ("model_type", "kind", "note")
    print_table("Supported families", columns, [[row[c] for c in columns] for row in families])
    listed = [[o["name"], o["summary"]] for o in organisms] or [["(none installed)", ""]]
    print_table("Bundled organisms (load by name)", ("name", "summary"), listed)


@app.command()
@one_line_errors
@model_options(default=None)
def doctor(model: ModelOptions, as_json: JsonOpt = False) -> None:
    """Check that every hook fires and captures match transformers exactly on MODEL.

    Exits 1 if any check fails. Run it before trusting mechscope on a new architecture.

    Example: mechscope doctor -m ./my-model --json
    """
    from mechscope.checks.doctor import run_doctor

    report = run_doctor(model.load())
    if as_json:
        print_json(report)
    else:
        rows = [
            [check.name, "[green]pass[/green]" if check.passed else "[red]FAIL[/red]", check.detail]
            for check in report.checks
        ]
        print_table(f"mechscope doctor: {report.model} ({report.family})", ("check", "result", "detail"), rows)
    if not report.passed:
        raise typer.Exit(1)
